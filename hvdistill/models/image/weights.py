"""Loading self-supervised teacher checkpoints from a local file into the teacher backbone.

Formats (`fmt`), ResNets:
- "moco": MoCo v1/v2 training checkpoints, `{"state_dict": {"module.encoder_q.<key>": ...}}`;
  the query encoder is kept, its fc/projection head, the key encoder and the queue are dropped.
- "dino": DINO ResNet-50 backbone weights (plain torchvision keys, no fc), or a full DINO
  training checkpoint (`{"teacher": {"backbone.<key>" | "module.backbone.<key>": ...}}`).
- "torchvision": a plain torchvision state dict (its fc is dropped).
ViTs (hvdistill/models/image/vit_weights.py):
- "dinov2": the DINOv2 release's plain state dict (keys equal our ViT's, `mask_token` included);
- "timm": timm's dinov2 weights (`reg_token`, no `mask_token`, maybe a `head.*`), renamed.
- "auto": detect which of these it is from the keys.

Files are read without unpickling anything: `.safetensors` files (timm's and Hugging Face's
`model.safetensors`; recognised by their header, whatever the name) with safetensors, all others
(.pth, .pt, .bin) with `torch.load(path, map_location="cpu", weights_only=True)`: a checkpoint
containing arbitrary pickled objects is refused, never executed. A path that is missing, a
directory, or a file that is no checkpoint (a text file, a truncated download) is a ValueError
naming the file and `model.image.weights`, never the reader's own exception. The outcome is a
`LoadReport` naming the loaded, missing, unexpected, shape-mismatched and dropped keys, and a
note for each conversion made (a timm rename, a dropped head, an absent `mask_token`); it is
logged. Loading is strict: after the known heads and other encoders are dropped, every backbone
key must be in the file with its shape and the file must hold nothing else (only BatchNorm
`num_batches_tracked` counters, which older checkpoints predate and an eval-mode backbone does
not read, and a ViT's `mask_token`, which timm's files lack and the forward never reads, may be
absent); otherwise a ValueError lists the missing, unexpected and mismatched keys
(`hvdistill/models/state.py`). `allow_partial=True` (`model.image.allow_partial_weights`) loads
the matching keys and logs a warning instead; nothing matching is an error either way.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hvdistill.models.image.vit_weights import (
    UNUSED_WHEN_MISSING,
    VIT_FORMATS,
    detect_vit_format,
    extract_vit_state,
    is_vit_state,
)
from hvdistill.models.state import describe, key_problems

log = logging.getLogger(__name__)

FORMATS = ("auto", "moco", "dino", "torchvision", *VIT_FORMATS)
MOCO_PREFIX = "module.encoder_q."
DINO_PREFIXES = ("module.backbone.", "backbone.")
HEAD_PREFIXES = ("fc.",)  # classification / projection heads the teacher never uses
# BN counters (absent from older files, unused in eval) and a ViT's mask token (absent from timm's)
TOLERATED_MISSING = ("num_batches_tracked", *UNUSED_WHEN_MISSING)


@dataclass
class LoadReport:
    """What happened to each key of a checkpoint loaded into a backbone."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # backbone keys absent from the file
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone lacks
    mismatched: list[str] = field(default_factory=list)  # present in both, different shapes
    dropped: list[str] = field(default_factory=list)  # heads / other encoders, ignored on purpose
    notes: list[str] = field(default_factory=list)  # conversions made (timm renames, absent mask_token)

    def summary(self) -> str:
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"{self.path} ({self.format}): {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
            f"{len(self.dropped)} dropped{notes}"
        )


def is_safetensors(path: Path) -> bool:
    """Whether a file starts as a safetensors file does: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"model.image.weights: {path} is not a readable safetensors file ({type(e).__name__}: "
            f"{str(e)[:200]}); is it a truncated download?"
        ) from e


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, read without unpickling: safetensors, or torch.load with
    weights_only=True (a file needing arbitrary unpickling is refused); a file that is no
    checkpoint at all is a ValueError naming it."""
    where = Path(path)
    if not where.is_file():
        what = "is a directory" if where.is_dir() else "does not exist"
        raise ValueError(
            f"model.image.weights: {path} {what}; give the teacher checkpoint file (.pth / .pt / .bin / "
            f".safetensors), or model.image.random_init=true"
        )
    if is_safetensors(where):
        return _read_safetensors(where)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # DINO saves its args
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refusing to load a checkpoint that needs arbitrary unpickling "
            f"(only tensors and plain containers are allowed): {str(e)[:300]}"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch.load on an outside file: any failure = not a checkpoint
        raise ValueError(
            f"model.image.weights: {path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
            f"is it a truncated download or another kind of file? Give a MoCo / DINO / torchvision / "
            f"DINOv2 / timm checkpoint"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def detect_format(obj: dict) -> str:
    """ "moco", "dino", "torchvision", "dinov2" or "timm" from the checkpoint's keys."""
    if is_vit_state(obj):
        return detect_vit_format(obj)
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any(str(k).startswith(MOCO_PREFIX) for k in sd):
        return "moco"
    if isinstance(obj.get("teacher"), dict):
        return "dino"
    if any(str(k).startswith(HEAD_PREFIXES) for k in obj):
        return "torchvision"
    if any(str(k).startswith("conv1.") for k in obj):
        return "dino"
    raise ValueError(
        "cannot detect the checkpoint format (no MoCo 'module.encoder_q.' keys, no DINO 'teacher', "
        "no torchvision 'conv1.' keys, no ViT 'pos_embed' / 'patch_embed.proj.weight'); set "
        "model.image.weights_format"
    )


def _strip(sd: dict, prefixes: tuple[str, ...], dropped: list[str]) -> dict[str, torch.Tensor]:
    """Keys under one of `prefixes` with the prefix removed; the rest go to `dropped`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            dropped.append(key)
        else:
            out[key[len(prefix) :]] = value
    return out


def extract_backbone_state(obj: dict, fmt: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(backbone tensors in our layout without heads, dropped original keys, conversion notes)."""
    if fmt in VIT_FORMATS:
        return extract_vit_state(obj, fmt)
    dropped: list[str] = []
    if fmt == "moco":
        sd = _strip(obj.get("state_dict", obj), (MOCO_PREFIX,), dropped)
    elif fmt == "dino" and isinstance(obj.get("teacher"), dict):
        sd = _strip(obj["teacher"], DINO_PREFIXES, dropped)
    elif fmt in ("dino", "torchvision"):
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        dropped += [k for k in obj if k not in sd]
    else:
        raise ValueError(f"weights format {fmt!r} is not one of {FORMATS}")
    heads = [k for k in sd if k.startswith(HEAD_PREFIXES)]
    dropped += heads
    return {k: v for k, v in sd.items() if k not in heads}, dropped, []


def load_teacher_weights(
    module: nn.Module, path: str | Path, fmt: str = "auto", allow_partial: bool = False
) -> LoadReport:
    """Load a checkpoint into `module` (an ImageTeacher, via its `.backbone`, a ResNet or a ViT).

    Strict unless `allow_partial` (see the module docstring); the backbone is unchanged when
    loading is refused.
    """
    if fmt not in FORMATS:
        raise ValueError(f"weights format {fmt!r} is not one of {FORMATS}")
    target = getattr(module, "backbone", module)
    obj = read_checkpoint(path)
    fmt = detect_format(obj) if fmt == "auto" else fmt
    state, dropped, notes = extract_backbone_state(obj, fmt)
    own = target.state_dict()
    report = LoadReport(path=str(path), format=fmt, dropped=sorted(dropped), notes=notes)
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = sorted(k for k in own if k not in usable)
    report.loaded = sorted(usable)
    if not usable:
        raise ValueError(
            f"{path}: no key matched the {type(target).__name__} backbone (format {fmt}); {report.summary()}"
        )
    problems = key_problems(own, state, tolerated=TOLERATED_MISSING)
    if any(problems.values()) and not allow_partial:
        raise ValueError(
            f"{path}: teacher checkpoint does not match the {type(target).__name__} backbone "
            f"(format {fmt}): {describe(problems)}; use a checkpoint of model.image.arch, or set "
            f"model.image.allow_partial_weights=true to load only the matching keys"
        )
    target.load_state_dict(usable, strict=False)
    log.info(report.summary())
    if any(problems.values()):
        log.warning("teacher weights loaded in part (allow_partial_weights): %s", describe(problems))
    return report
