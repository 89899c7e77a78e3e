"""The `teacher_train` section: training a small image teacher on the synthetic world; its checks.

Only `hvdistill teacher train` reads it (docs/teacher.md). The network is the backbone of
`model.image` (its arch), trained at `teacher_train.output_stride` and used by pretraining at
`model.image.output_stride`; crops take their size from `geometry.crop_height` /
`geometry.crop_width` and their sampling from the `augment` section's crop ranges; the data
are the roots of `data.sources`, at the stored resolution of the `data` section.
`target` picks what the teacher learns: the renderer's class maps (classes) or, knowing no
classes, its depth and surface-normal maps (geometry).

A ViT arch (`vit_<size>_patch<p>...`) is trained and scored at its patch: the two output-stride
keys are ResNet dilations and are not read for a ViT (so not checked either); its crops must be
at least one patch on each side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hvdistill.config.loader import check_range
from hvdistill.config.model import vit_patch_size

if TYPE_CHECKING:
    from hvdistill.config import Config

ADAMW_MAX_LR = 0.01  # above this an AdamW rate is an SGD rate by mistake (AdamW's usual: 1e-4 - 1e-3)
OUTPUT_STRIDES = (4, 8, 16, 32)  # what a torchvision ResNet reaches by dilating layer2..layer4
RESNET_FORMAT = "torchvision"  # what a ResNet teacher is saved as: a plain torchvision state dict
VIT_FORMAT = "dinov2"  # what a ViT teacher is saved as: the DINOv2 release's plain state dict
SPLITS = ("train", "val")
DEPTH_MAP_MAX_M = 65.535  # depth maps are 16-bit millimetres (hvdistill/synthetic/side_outputs.py)


@dataclass(slots=True, kw_only=True)
class TeacherTrainConfig:
    """Supervised training of the image backbone on the renderer's per-pixel maps."""

    # classes: per-pixel cross-entropy on the class maps; geometry: no classes, depth bins
    # (cross-entropy) + surface normal (1 - cosine) from the depth and normal maps
    target: Literal["classes", "geometry"] = "classes"
    # the dataset of data.sources whose roots the teacher reads; "" = the only one there (a config
    # mixing datasets, such as configs/multi.yaml, names one: a teacher learns one class space)
    dataset: str = ""
    depth_bins: int = 64  # geometry: log-spaced depth classes from depth_min to depth_max
    depth_min: float = 1.0  # metres; nearer depths fall in the first bin
    depth_max: float = 65.0  # metres (at most DEPTH_MAP_MAX_M); farther depths fall in the last bin
    normal_weight: float = 1.0  # geometry: loss = depth cross-entropy + normal_weight x normal loss

    steps: int = 300
    batch_size: int = 4
    # sgd: SGD with momentum (the ResNets' recipe); adamw: AdamW (betas 0.9, 0.999), the usual
    # optimiser of a ViT trained from scratch, with a rate about 50x smaller (e.g. lr=0.001)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05  # peak rate, cosine-decayed to 0 over `steps`
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4  # sgd: L2 in the gradient; adamw: decoupled
    seed: int = 0
    # a ResNet's training stride (weights are stride-free, pretraining dilates to its own);
    # not read for a ViT, which trains at its patch
    output_stride: int = 8
    loader_workers: int = 0  # DataLoader worker processes (0 = read in the training process)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    output: str = "runs/teacher/teacher.pt"  # the backbone state dict; <output>.json beside it
    train_split: Literal["train", "val"] = "train"  # split of each data.sources root trained on
    eval_split: Literal["train", "val"] = "val"  # held-out split scored after training
    eval_images: int = 96  # cap on the held-out images scored (0 = all of them)
    max_bad_fraction: float = 0.1  # stop when more of the listed pairs than this are unreadable
    log_every: int = 25  # steps between loss lines


def saved_format(arch: str) -> str:
    """The `model.image.weights_format` of the file a teacher of `arch` is saved as (no model import)."""
    return VIT_FORMAT if vit_patch_size(arch) is not None else RESNET_FORMAT


def teacher_train_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `teacher_train` section and what it needs elsewhere, with its fix."""
    t = cfg.teacher_train
    p: list[str] = []
    for key in ("steps", "batch_size", "log_every"):
        if getattr(t, key) < 1:
            p.append(f"teacher_train.{key}: {getattr(t, key)} must be >= 1")
    for key in ("loader_workers", "eval_images"):
        if getattr(t, key) < 0:
            p.append(f"teacher_train.{key}: {getattr(t, key)} must be >= 0")
    if t.lr <= 0:
        p.append(f"teacher_train.lr: {t.lr} must be > 0")
    elif t.optimizer == "adamw" and t.lr > ADAMW_MAX_LR:
        p.append(
            f"teacher_train.lr: {t.lr} is an SGD rate; AdamW (teacher_train.optimizer=adamw) diverges "
            f"there: set teacher_train.lr to at most {ADAMW_MAX_LR} (e.g. 0.001)"
        )
    if t.weight_decay < 0:
        p.append(f"teacher_train.weight_decay: {t.weight_decay} must be >= 0")
    check_range(p, "teacher_train.momentum", t.momentum, 0.0, 0.999)
    check_range(p, "teacher_train.max_bad_fraction", t.max_bad_fraction, 0.0, 1.0)
    p += _stride_problems(cfg)
    if not t.output or not t.output.endswith(".pt"):
        p.append(f"teacher_train.output: {t.output!r} must name a .pt file (e.g. runs/teacher/teacher.pt)")
    p += _geometry_problems(t)
    if t.train_split == t.eval_split:
        p.append(
            f"teacher_train.eval_split: {t.eval_split} is the training split too; "
            f"score held-out scenes (teacher_train.eval_split=val)"
        )
    return p + _source_problems(cfg)


def _stride_problems(cfg: Config) -> list[str]:
    """A ResNet's two dilation strides; a ViT's crop against its patch (its stride is not a key)."""
    patch = vit_patch_size(cfg.model.image.arch)
    if patch is not None:
        return [
            f"geometry.{key}: {getattr(cfg.geometry, key)} is smaller than one {patch} px patch of the "
            f"{cfg.model.image.arch} teacher; set geometry.{key} >= {patch}"
            for key in ("crop_height", "crop_width")
            if getattr(cfg.geometry, key) < patch
        ]
    p: list[str] = []
    if cfg.teacher_train.output_stride not in OUTPUT_STRIDES:
        p.append(
            f"teacher_train.output_stride: {cfg.teacher_train.output_stride} is not one of "
            f"{list(OUTPUT_STRIDES)}"
        )
    if cfg.model.image.output_stride not in OUTPUT_STRIDES:
        p.append(
            f"model.image.output_stride: {cfg.model.image.output_stride} is not one of "
            f"{list(OUTPUT_STRIDES)}; the teacher is scored at the stride pretraining uses"
        )
    return p


def _geometry_problems(t: TeacherTrainConfig) -> list[str]:
    """The depth bins and the normal loss weight (checked whatever the target, so a switch is safe)."""
    p: list[str] = []
    if t.depth_bins < 2:
        p.append(f"teacher_train.depth_bins: {t.depth_bins} must be >= 2 (e.g. 64)")
    if not t.depth_min > 0:
        p.append(f"teacher_train.depth_min: {t.depth_min} must be > 0 metres (bins are log-spaced; e.g. 1.0)")
    if not t.depth_max > t.depth_min:
        p.append(f"teacher_train.depth_max: {t.depth_max} must be > teacher_train.depth_min={t.depth_min}")
    if t.depth_max > DEPTH_MAP_MAX_M:
        p.append(
            f"teacher_train.depth_max: {t.depth_max} is beyond the depth maps' {DEPTH_MAP_MAX_M} m "
            f"(16-bit millimetres); set it to at most {DEPTH_MAP_MAX_M}"
        )
    if not t.normal_weight >= 0:
        p.append(f"teacher_train.normal_weight: {t.normal_weight} must be >= 0")
    return p


def teacher_dataset(cfg: Config) -> str:
    """The dataset whose data.sources roots the teacher reads (`teacher_train.dataset`, or the only one)."""
    names = sorted({s.name for s in cfg.data.sources})
    return cfg.teacher_train.dataset or (names[0] if len(names) == 1 else "")


def _source_problems(cfg: Config) -> list[str]:
    """The data roots the teacher reads: at least one, all of one dataset (one class space)."""
    names = sorted({s.name for s in cfg.data.sources})
    chosen = cfg.teacher_train.dataset
    if not cfg.data.sources:
        return ["data.sources: empty; name the synthetic world's root (written with `--side-outputs`)"]
    if chosen and chosen not in names:
        return [f"teacher_train.dataset: {chosen!r} is not a dataset of data.sources; choose one of {names}"]
    if len(names) > 1 and not chosen:
        return [
            f"data.sources: mixes datasets {names}; the teacher learns one class space, so set "
            f"teacher_train.dataset to one of them (it reads that dataset's roots only)"
        ]
    if teacher_dataset(cfg) == "argoverse2" and cfg.teacher_train.target == "classes":
        return [
            "teacher_train.target: classes needs class maps in a labelled dataset's classes; Argoverse 2 "
            "has none: use teacher_train.target=geometry or another teacher_train.dataset"
        ]
    return []
