"""The downstream sections and their checks: `finetune` (segmentation) and `sweep` (label fractions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hvdistill.config.loader import check_range

if TYPE_CHECKING:
    from hvdistill.config import Config


@dataclass(slots=True, kw_only=True)
class FinetuneConfig:
    dataset: Literal["nuscenes", "semantickitti"] = "nuscenes"
    num_classes: int = 17  # 16 classes + ignore 0 (nuScenes); 20 for SemanticKITTI
    ignore_index: int = 0
    epochs: int = 100
    lr_trunk: float = 0.02
    lr_head: float = 2.0
    batch_size: int = 16
    lovasz: bool = True
    linear_probe: bool = False
    label_fraction: float = 1.0
    checkpoint: str = ""


@dataclass(slots=True, kw_only=True)
class SweepConfig:
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoints: list[str] = field(default_factory=list)
    max_concurrent: int = 1


def finetune_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `finetune` section."""
    p: list[str] = []
    check_range(p, "finetune.label_fraction", cfg.finetune.label_fraction, 0.0, 1.0)
    return p


def sweep_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `sweep` section."""
    p: list[str] = []
    for f in cfg.sweep.label_fractions:
        check_range(p, "sweep.label_fractions[*]", f, 0.0, 1.0)
    if cfg.sweep.max_concurrent < 1:
        p.append(f"sweep.max_concurrent: {cfg.sweep.max_concurrent} must be >= 1")
    return p
