"""ViT teacher weights: DINOv2 release .pth and timm safetensors / .bin files, loaded strictly."""

import pytest
import torch
from safetensors.torch import save_file

from hvdistill.config import ModelConfig, PrecisionConfig
from hvdistill.models.image import ImageTeacher, build_image_teacher, load_teacher_weights

ARCH = "vit_tiny_patch14_reg4"


def release_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A DINOv2-layout state dict of the tiny ViT with every tensor distinguishable from init."""
    torch.manual_seed(seed)
    teacher = ImageTeacher(ARCH)
    return {k: torch.randn_like(v) for k, v in teacher.backbone.state_dict().items()}


def timm_state(release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's layout of the same weights (its `_convert_dinov2`), plus a classification head."""
    sd = {
        k: v
        for k, v in release.items()
        if k not in ("mask_token", "register_tokens", "pos_embed", "cls_token")
    }
    sd["reg_token"] = release["register_tokens"]
    sd["cls_token"] = release["cls_token"] + release["pos_embed"][:, 0]
    sd["pos_embed"] = release["pos_embed"][:, 1:]
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 192), torch.randn(10)
    return sd


def test_a_dinov2_release_pth_loads_key_for_key(tmp_path):
    release = release_state()
    torch.save(release, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    teacher = ImageTeacher(ARCH)
    report = load_teacher_weights(teacher, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert report.format == "dinov2" and report.missing == report.unexpected == report.mismatched == []
    assert report.dropped == [] and len(report.loaded) == len(release)
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(value, release[key]), key


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_timm_files_load_with_their_renames_noted(tmp_path, name):
    release = release_state()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(timm_state(release), str(path))
    else:
        torch.save(timm_state(release), path)
    teacher = ImageTeacher(ARCH)
    images = torch.rand(1, 3, 28, 42)
    report = load_teacher_weights(teacher, path)
    assert report.format == "timm" and report.dropped == ["head.bias", "head.weight"]
    notes = " | ".join(report.notes)
    assert "reg_token renamed" in notes and "mask_token not in the file" in notes and "head dropped" in notes
    reference = ImageTeacher(ARCH)
    reference.backbone.load_state_dict(release)
    reference.head.load_state_dict(teacher.head.state_dict())
    torch.testing.assert_close(teacher(images).head, reference(images).head, atol=1e-5, rtol=1e-5)


def test_a_renamed_key_fails_naming_it_and_leaves_the_backbone_alone(tmp_path):
    release = release_state()
    release["blocks.1.attn.qkv_weight"] = release.pop("blocks.1.attn.qkv.weight")
    torch.save(release, tmp_path / "renamed.pth")
    teacher = ImageTeacher(ARCH)
    before = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_teacher_weights(teacher, tmp_path / "renamed.pth")
    message = str(err.value)
    assert "renamed.pth" in message and "format dinov2" in message
    assert "1 missing (blocks.1.attn.qkv.weight)" in message
    assert "1 unexpected (blocks.1.attn.qkv_weight)" in message
    assert all(torch.equal(v, before[k]) for k, v in teacher.backbone.state_dict().items())


def test_weights_of_another_layout_are_listed_missing_and_mismatched(tmp_path):
    torch.manual_seed(0)
    plain = ImageTeacher("vit_tiny_patch14").backbone.state_dict()  # no registers
    plain["pos_embed"] = torch.zeros(1, 1 + 16 * 16, 192)  # a 224 px model's 16 x 16 grid
    torch.save(plain, tmp_path / "plain224.pth")
    with pytest.raises(ValueError) as err:
        load_teacher_weights(ImageTeacher(ARCH), tmp_path / "plain224.pth", "dinov2")
    message = str(err.value)
    assert "1 missing (register_tokens)" in message
    assert "1 mismatched (pos_embed: given (1, 257, 192) vs model (1, 1370, 192))" in message


def test_a_truncated_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(release_state(), str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(
        ValueError, match=r"model.image.weights: .*model.safetensors is not a readable safetensors"
    ):
        load_teacher_weights(ImageTeacher(ARCH), path)


def test_build_image_teacher_loads_a_vit_checkpoint_from_the_config(tmp_path):
    torch.save(release_state(), tmp_path / "vit.pth")
    cfg = ModelConfig()
    cfg.image.arch, cfg.image.weights = ARCH, str(tmp_path / "vit.pth")
    teacher = build_image_teacher(cfg, PrecisionConfig(image_dtype="float32"))
    assert teacher.load_report.format == "dinov2" and teacher.grid == (14, 6.5)
    assert not teacher.inference.active  # BatchNorm folding / channels-last are ResNet switches
