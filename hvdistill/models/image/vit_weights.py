"""ViT teacher checkpoints: the DINOv2 release's layout, and timm's renamed into it.

Two formats (`model.image.weights_format`), both plain state dicts of tensors:
- "dinov2": the DINOv2 release files (`dinov2_vits14_pretrain.pth`, `dinov2_vitb14_reg4_pretrain.pth`,
  ...): keys equal our ViT's (hvdistill/models/image/vit.py), `mask_token` included;
- "timm": timm's `vit_*_patch14[_reg4]_dinov2` weights (`model.safetensors` or
  `pytorch_model.bin` of the Hugging Face hub's `timm/...` repositories, or a timm
  `state_dict()` saved as .pth): `reg_token` instead of `register_tokens`, no `mask_token`, and
  a register model's `pos_embed` has no class-token entry (timm folded it into `cls_token`:
  cls' = cls + pos[0], which our forward reproduces with a zero entry); a classification
  `head.*` may be present.
`detect_vit_format` tells them apart ("mask_token" or "register_tokens" present: dinov2).
`extract_vit_state` returns the state in our layout plus the keys dropped on purpose (`head.*`,
non-tensor entries) and a note for every conversion made. What is dropped or converted is
known to be unused or equivalent; every other key must match (the strict check is the
caller's, hvdistill/models/image/weights.py). A file without `mask_token` (timm's) is
accepted: it is used only by DINOv2's masked training, and stays at its zero init.
"""

from __future__ import annotations

import math

import torch

VIT_FORMATS = ("dinov2", "timm")
VIT_HEAD_PREFIXES = ("head.",)  # a classification head (timm with num_classes > 0)
UNUSED_WHEN_MISSING = ("mask_token",)  # DINOv2's masked-training token; the forward never reads it
VIT_MARKERS = ("pos_embed", "patch_embed.proj.weight")


def is_vit_state(obj: dict) -> bool:
    """Whether a checkpoint's keys are a ViT's (DINOv2 or timm layout)."""
    return all(key in obj for key in VIT_MARKERS)


def detect_vit_format(obj: dict) -> str:
    """ "dinov2" or "timm" from the keys (see the module docstring)."""
    return "dinov2" if "mask_token" in obj or "register_tokens" in obj else "timm"


def _from_timm(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """timm's keys -> the DINOv2 release's (see the module docstring)."""
    out = dict(sd)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        notes.append("reg_token renamed register_tokens (timm's name)")
    pos = out.get("pos_embed")
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)  # (1, 1 + M * M, D)
        notes.append(
            "pos_embed: timm's register layout has no class-token entry (folded into cls_token); "
            "a zero entry added, which gives the same tokens"
        )
    return out


def extract_vit_state(obj: dict, fmt: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(state in our ViT's layout, dropped original keys, notes) of a "dinov2" or "timm" checkpoint."""
    if fmt not in VIT_FORMATS:
        raise ValueError(f"ViT weights format {fmt!r} is not one of {VIT_FORMATS}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = [k for k in obj if k not in sd]
    notes: list[str] = []
    if fmt == "timm":
        sd = _from_timm(sd, notes)
    heads = [k for k in sd if k.startswith(VIT_HEAD_PREFIXES)]
    if heads:
        notes.append(
            f"classification head dropped ({', '.join(sorted(heads))}): the teacher never classifies"
        )
    dropped += heads
    for key in UNUSED_WHEN_MISSING:
        if key not in sd:
            notes.append(f"{key} not in the file ({fmt}): unused by the forward, left at zeros")
    return {k: v for k, v in sd.items() if k not in heads}, dropped, notes


__all__ = ["VIT_FORMATS", "UNUSED_WHEN_MISSING", "detect_vit_format", "extract_vit_state", "is_vit_state"]
