"""Our DINOv2-layout ViT gives timm's tokens for the same weights, in both checkpoint layouts.

The reference (tests/models/image/vit_reference/) was written once by make_vit_reference.py
with timm 1.0.31: tiny random `vit_small_patch14[_reg4]_dinov2`-style models (16-d, 2 blocks,
518 px so the position embedding is 37 x 37 as in the releases), a 60 x 115 input (padded to a
5 x 9 patch grid, so the position embedding is interpolated and the padding is exercised), and
timm's `forward_features` tokens. Tolerance 1e-5 absolute (the tokens are LayerNorm outputs,
O(1)); on the machine that wrote the fixture they agree bit for bit. Interpolating the position
embedding without antialiasing, or with the DINOv2 release's 0.1 offset, moves them by > 1.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hvdistill.models.image.vit import VIT_ARCHITECTURES, VisionTransformer, VitLayout, resample_pos_embed
from hvdistill.models.image.weights import load_teacher_weights

REFERENCE = Path(__file__).parent / "vit_reference"
TOLERANCE = 1e-5
# parameters of the release layout: timm's count for its dinov2 model + mask_token (D), and for
# register models + the class token's position entry (D) that timm folds into cls_token
PARAMETERS = {
    "vit_small_patch14": 22_056_192 + 384,
    "vit_base_patch14": 86_579_712 + 768,
    "vit_small_patch14_reg4": 22_057_344 + 2 * 384,
}


def reference_vit(variant: str) -> VisionTransformer:
    return VisionTransformer(VitLayout(16, 2, 2, register_tokens=4 if variant == "reg4" else 0)).eval()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE / "io.safetensors"))


@pytest.mark.parametrize("variant", ["plain", "reg4"])
@pytest.mark.parametrize("fmt", ["dinov2", "timm"])
def test_tokens_equal_timms_for_the_same_weights(io, variant, fmt):
    vit = reference_vit(variant)
    report = load_teacher_weights(vit, REFERENCE / f"{variant}_{fmt}.safetensors")
    assert report.format == fmt and report.unexpected == [] and report.mismatched == []
    assert report.missing == ([] if fmt == "dinov2" else ["mask_token"])  # timm drops it; unused
    with torch.no_grad():
        tokens = vit.tokens(io["image"])  # (2, 1 + R + 45, 16)
        fmap = vit.features(io["image"])  # (2, 16, 5, 9)
    expected = io[f"{variant}_tokens"]
    torch.testing.assert_close(tokens, expected, atol=TOLERANCE, rtol=0)
    patches = expected[:, -45:].transpose(1, 2).reshape(2, 16, 5, 9)  # row-major 5 x 9 patch grid
    torch.testing.assert_close(fmap, patches, atol=TOLERANCE, rtol=0)


def test_the_release_layout_loads_strictly_key_for_key():
    release = load_file(str(REFERENCE / "reg4_dinov2.safetensors"))
    vit = reference_vit("reg4")
    vit.load_state_dict(release, strict=True)  # same names and shapes, mask_token included
    assert set(vit.state_dict()) == set(release)


@pytest.mark.parametrize("arch", sorted(PARAMETERS))
def test_release_names_shapes_and_sizes(arch):
    with torch.device("meta"):
        vit = VisionTransformer(VIT_ARCHITECTURES[arch])
    sd = vit.state_dict()
    d, blocks = VIT_ARCHITECTURES[arch].embed_dim, VIT_ARCHITECTURES[arch].depth
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, d) and sd["mask_token"].shape == (1, d)
    assert sd["patch_embed.proj.weight"].shape == (d, 3, 14, 14)
    last = f"blocks.{blocks - 1}"
    assert sd[f"{last}.attn.qkv.weight"].shape == (3 * d, d) and sd[f"{last}.mlp.fc1.weight"].shape == (
        4 * d,
        d,
    )
    assert sd[f"{last}.ls2.gamma"].shape == (d,) and f"blocks.{blocks}.norm1.weight" not in sd
    assert ("register_tokens" in sd) == arch.endswith("_reg4")
    assert sum(p.numel() for p in vit.parameters()) == PARAMETERS[arch]


def test_padding_is_zeros_right_and_bottom():
    torch.manual_seed(0)
    vit = VisionTransformer(VitLayout(16, 1, 2)).eval()
    x = torch.randn(1, 3, 30, 43)  # -> 42 x 56, a 3 x 4 grid
    with torch.no_grad():
        got = vit.features(x)
        padded = vit.features(F.pad(x, (0, 13, 0, 12)))
    assert got.shape == (1, 16, 3, 4)
    torch.testing.assert_close(got, padded, atol=0, rtol=0)


def test_position_embedding_is_kept_at_the_release_grid_and_resampled_elsewhere():
    pos = torch.randn(1, 37 * 37, 8)
    assert resample_pos_embed(pos, (37, 37)) is pos
    out = resample_pos_embed(pos, (16, 30))
    assert out.shape == (1, 16 * 30, 8)
    square = pos.reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(square, size=(16, 30), mode="bicubic", antialias=True)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 1).reshape(1, -1, 8))
