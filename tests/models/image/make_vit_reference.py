"""One-off generator of the ViT reference fixture (tests/models/image/vit_reference/); needs timm.

Not a test and not run by the suite: it was run once with timm 1.0.31 (unpacked, without its
dependencies) and its output is committed. timm imports torchvision at import time, which does
not load beside the project's CPU torch, so a stub `torchvision` package is put in `sys.modules`
first with the few names timm's imports ask for (no torchvision code runs: the ViT path uses none).

    PYTHONPATH=/tmp/timmref .venv/bin/python -m tests.models.image.make_vit_reference

For each variant (`plain`: DINOv2 ViT/14 layout; `reg4`: with 4 register tokens) it draws a
random state dict in the DINOv2 release's layout (tiny widths, 2 blocks, 518 px so the position
embedding is 37 x 37 as in the releases), converts it with timm's own `checkpoint_filter_fn`
(the path timm takes for DINOv2 release files), loads it strictly into timm's
`vit_small_patch14[_reg4]_dinov2` model with those widths (`dynamic_img_size`, and
`dynamic_img_pad`, so the 60 x 115 input is padded right/bottom to a 5 x 9 patch grid and the
position embedding is interpolated from 37 x 37), and runs `forward_features` (tokens after the
final norm). Written, all float32 safetensors:
- `<variant>_dinov2.safetensors`: the DINOv2-layout state dict (with `mask_token`);
- `<variant>_timm.safetensors`: timm's state dict of the loaded model (`reg_token`, no
  `mask_token`, register models without the class token's position entry);
- `io.safetensors`: `image` (2, 3, 60, 115) and `<variant>_tokens` (2, 1 + R + 45, D).
"""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).parent / "vit_reference"
WIDTHS = {"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": 518}
IMAGE_SHAPE = (2, 3, 60, 115)  # not multiples of 14: padded to 70 x 126, a 5 x 9 grid
TIMM_MODELS = {"plain": "vit_small_patch14_dinov2", "reg4": "vit_small_patch14_reg4_dinov2"}


class _StubModule(types.ModuleType):
    """A module answering every name timm's imports ask of torchvision with a placeholder class."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":
            return enum.Enum(name, "NEAREST NEAREST_EXACT BILINEAR BICUBIC BOX HAMMING LANCZOS")
        return type(name, (), {})


def stub_torchvision() -> None:
    names = [
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.misc",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.transforms.v2",
        "torchvision.datasets",
    ]
    for name in names:
        module = _StubModule(name)
        module.__path__ = []
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def dinov2_state(registers: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random state dict in the DINOv2 release's layout (keys from our ViT, values drawn here)."""
    from hvdistill.models.image.vit import VisionTransformer, VitLayout

    d = WIDTHS["embed_dim"]
    layout = VitLayout(d, WIDTHS["depth"], WIDTHS["num_heads"], register_tokens=registers)
    out = {}
    for key, value in VisionTransformer(layout).state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith(".gamma"):  # layer scales well away from timm's 1e-5 init: blocks matter
            out[key] = 0.3 + 0.7 * torch.rand(value.shape, generator=generator)
        elif "norm" in key and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * noise
        elif key.endswith(".bias"):
            out[key] = 0.1 * noise
        elif key in ("pos_embed", "cls_token", "register_tokens", "mask_token"):
            out[key] = 0.5 * noise
        else:
            out[key] = noise / value.shape[-1] ** 0.5 if value.dim() == 2 else 0.05 * noise
    return out


def main() -> None:
    stub_torchvision()
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(IMAGE_SHAPE, generator=generator)
    io = {"image": image}
    OUT.mkdir(exist_ok=True)
    for variant, name in TIMM_MODELS.items():
        registers = 4 if variant == "reg4" else 0
        model = timm.create_model(
            name, pretrained=False, num_classes=0, dynamic_img_size=True, dynamic_img_pad=True, **WIDTHS
        ).eval()
        release = dinov2_state(registers, generator)
        model.load_state_dict(checkpoint_filter_fn(dict(release), model), strict=True)
        with torch.no_grad():
            io[f"{variant}_tokens"] = model.forward_features(image).contiguous()
        save_file(release, str(OUT / f"{variant}_dinov2.safetensors"))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(OUT / f"{variant}_timm.safetensors"),
        )
    save_file(
        io,
        str(OUT / "io.safetensors"),
        metadata={"timm": timm.__version__, **{k: str(v) for k, v in WIDTHS.items()}},
    )
    for path in sorted(OUT.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
