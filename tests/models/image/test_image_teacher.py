"""The teacher: stride-4 features, frozen eval-mode backbone, normalised IPV output."""

import torch
import torch.nn.functional as F

from hvdistill.models.image import ImageTeacher
from hvdistill.models.image.teacher import upsample_cells


def make_teacher(dtype=torch.float32) -> ImageTeacher:
    torch.manual_seed(0)
    return ImageTeacher(
        "resnet18",
        feature_dim=64,
        output_stride=4,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        compute_dtype=dtype,
    )


def test_shapes_stride_and_normalisation():
    teacher = make_teacher()
    images = torch.rand(2, 3, 64, 96)
    out = teacher(images, with_backbone=True)
    assert out.backbone.shape == (2, 512, 16, 24)  # output stride 4
    assert out.head.shape == (2, 64, 16, 24)
    assert out.ipv.shape == (2, 64, 64, 96)
    assert all(t.dtype == torch.float32 for t in out)
    torch.testing.assert_close(out.ipv.norm(dim=1), torch.ones(2, 64, 96))
    up = upsample_cells(out.head, 4, 0.0)  # cell j at pixel 4j (tests/models/image/test_feature_centres.py)
    torch.testing.assert_close(out.ipv, F.normalize(up, dim=1))


def test_input_normalisation_happens_inside():
    teacher = make_teacher()
    images = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = teacher.backbone.features((images - mean) / std)
    torch.testing.assert_close(teacher(images, with_backbone=True).backbone, expected)


def test_backbone_frozen_and_stays_in_eval_mode():
    teacher = make_teacher()
    teacher.train()
    assert teacher.head.training
    assert not any(m.training for m in teacher.backbone.modules())
    before = teacher.backbone.bn1.running_mean.clone()
    out = teacher(torch.rand(2, 3, 32, 32))
    out.ipv.sum().backward()
    assert torch.equal(teacher.backbone.bn1.running_mean, before)  # BN statistics untouched
    assert all(p.grad is None and not p.requires_grad for p in teacher.backbone.parameters())
    assert teacher.head.weight.grad is not None and teacher.head.weight.grad.abs().sum() > 0
    assert [n for n, p in teacher.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_bf16_autocast_returns_float32_close_to_fp32():
    images = torch.rand(1, 3, 32, 48)
    ref = make_teacher(torch.float32)(images)
    low = make_teacher(torch.bfloat16)(images, with_backbone=True)
    assert low.ipv.dtype == torch.float32 and low.backbone.dtype == torch.float32
    cos = (ref.ipv * low.ipv).sum(dim=1)  # both unit vectors per pixel
    assert cos.mean() > 0.98


def make_vit_teacher(dtype=torch.float32, arch: str = "vit_tiny_patch14") -> ImageTeacher:
    torch.manual_seed(0)
    return ImageTeacher(
        arch, feature_dim=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], compute_dtype=dtype
    )


def test_vit_teacher_on_the_paper_crop_pads_to_a_16_x_30_grid():
    """224 x 416: 416 = 29 x 14 + 10, padded to 30 patches; the last one's centre (412.5) is in the crop."""
    teacher = make_vit_teacher(arch="vit_tiny_patch14_reg4")
    out = teacher(torch.rand(2, 3, 224, 416), with_backbone=True)
    assert out.backbone.shape == (2, 192, 16, 30) and out.head.shape == (2, 32, 16, 30)
    assert out.ipv.shape == (2, 32, 224, 416) and all(t.dtype == torch.float32 for t in out)
    torch.testing.assert_close(out.ipv.norm(dim=1), torch.ones(2, 224, 416))
    assert teacher.grid == (14, 6.5) and not teacher.inference.active
    assert [n for n, p in teacher.named_parameters()] == ["head.weight", "head.bias"]


def test_vit_teacher_is_frozen_and_its_bf16_autocast_returns_float32_close_to_fp32():
    images = torch.rand(1, 3, 56, 100)
    ref = make_vit_teacher(torch.float32)(images)
    teacher = make_vit_teacher(torch.bfloat16).train()
    low = teacher(images, with_backbone=True)
    assert (
        low.ipv.dtype == torch.float32
        and low.backbone.dtype == torch.float32
        and low.head.shape[-2:] == (4, 7)
    )
    assert (ref.ipv * low.ipv).sum(dim=1).mean() > 0.98  # both unit vectors per pixel
    low.ipv.sum().backward()
    assert not teacher.backbone.training and all(p.grad is None for p in teacher.backbone.parameters())
    assert teacher.head.weight.grad is not None
