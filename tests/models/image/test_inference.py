"""The teacher's inference copy: folded BatchNorm and channels-last give the plain backbone's
features (within float32 rounding), the teacher's outputs and head gradients are unchanged, and
the copy follows every change of the backbone's weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hvdistill.models.image import ImageTeacher
from hvdistill.models.image.inference import prepare_for_inference
from hvdistill.models.image.resnet import dilation_for_output_stride, resnet18, resnet50


def randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so folding is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def assert_features_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal within float32 rounding, relative to the map's scale."""
    scale = want.abs().max()
    torch.testing.assert_close(got / scale, want / scale, atol=2e-5, rtol=0)


@pytest.mark.parametrize("fold,channels_last", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("arch", [resnet18, resnet50])
def test_prepared_backbone_gives_the_plain_features(arch, fold, channels_last):
    torch.manual_seed(0)
    plain = arch(dilation_for_output_stride(4)).eval()
    randomise_batchnorm(plain, 1)
    x = torch.rand(2, 3, 48, 80)
    prepared = prepare_for_inference(plain, fold, channels_last)
    with torch.no_grad():
        want = plain.features(x)
        got = prepared.features(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    assert_features_close(got, want)
    if fold:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())  # the original is untouched


def test_a_batchnorm_without_its_convolution_is_refused():
    plain = resnet18(dilation_for_output_stride(4)).eval()
    plain.layer1[0].conv1 = nn.Identity()
    with pytest.raises(ValueError, match="layer1.0.bn1"):
        prepare_for_inference(plain, fold=True, channels_last=False)


def _teacher(fold: bool, channels_last: bool) -> ImageTeacher:
    torch.manual_seed(0)
    teacher = ImageTeacher("resnet18", fold_batchnorm=fold, channels_last=channels_last)
    randomise_batchnorm(teacher.backbone, 2)
    return teacher


def test_teacher_outputs_and_head_gradients_are_unchanged():
    fast, plain = _teacher(True, True), _teacher(False, False)
    images = torch.rand(3, 3, 64, 96)
    outs, grads = [], []
    for teacher in (fast, plain):
        out = teacher(images, with_backbone=True)
        (out.ipv * torch.linspace(-1, 1, out.ipv.numel()).view_as(out.ipv)).sum().backward()
        outs.append(out)
        grads.append(teacher.head.weight.grad.clone())
    assert outs[0].backbone.is_contiguous()  # the same layout as the plain backbone's map
    assert_features_close(outs[0].backbone, outs[1].backbone)
    assert_features_close(outs[0].head, outs[1].head)
    torch.testing.assert_close(outs[0].ipv, outs[1].ipv, atol=1e-4, rtol=0)
    assert_features_close(grads[0], grads[1])


def test_the_copy_follows_every_change_of_the_backbone():
    fast, plain = _teacher(True, True), _teacher(False, False)
    images = torch.rand(1, 3, 32, 48)
    first = fast(images).head
    other = resnet18(dilation_for_output_stride(4)).state_dict()
    for teacher in (fast, plain):  # a weight load (in place) and a direct edit of one statistic
        teacher.backbone.load_state_dict(other, strict=False)
        teacher.backbone.layer4[1].bn2.running_mean.add_(0.5)
    with torch.no_grad():
        got, want = fast(images).head, plain(images).head
    assert not torch.allclose(got, first)  # not the copy made before the change
    assert_features_close(got, want)
    fast.backbone.layer1[0].conv1.weight.data = torch.zeros_like(fast.backbone.layer1[0].conv1.weight)
    plain.backbone.layer1[0].conv1.weight.data = torch.zeros_like(plain.backbone.layer1[0].conv1.weight)
    with torch.no_grad():  # a replaced tensor (as a device move replaces them) is seen too
        assert_features_close(fast(images).head, plain(images).head)
