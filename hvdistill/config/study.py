"""The `study` section: the label-efficiency study `hvdistill study` runs (docs/results.md).

The study pretrains one backbone per entry of `study.variants` (each a loss ablation of the
configured method) on the synthetic world, then fine-tunes each of them and a randomly
initialised backbone through the sweep machinery (`sweep.label_fractions` x `sweep.seeds`), and
linearly probes them at `study.probe_fractions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hvdistill.config.downstream import fraction_problems
from hvdistill.config.loader import check_name

if TYPE_CHECKING:
    from hvdistill.config import Config

# variant -> the loss terms it keeps (the others get weight 0, so their branches are not built)
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": ("ipv", "depth", "bev"),  # HVDistill: IPV + depth + BEV
    "ipv_depth": ("ipv", "depth"),  # HVDistill without the BEV contrast
    "ipv": ("ipv",),  # SLidR-like: image-plane superpixel contrast only
}


@dataclass(slots=True, kw_only=True)
class StudyConfig:
    """What `hvdistill study` compares and how the linear probes run."""

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # pretrained; random init is added
    probe_fractions: list[float] = field(default_factory=lambda: [1.0])  # [] = no linear probing
    probe_max_steps: int = 0  # steps of a linear probe; 0 = finetune.max_steps
    world_side_outputs: bool = True  # write the renderer's class maps (the synthetic teacher's labels)
    tag: str = ""  # names a second set of sweeps on the same pretrainings: finetune-<tag>, study-<tag>.md


def study_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `study` section, each with its fix."""
    s = cfg.study
    p: list[str] = []
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown or not s.variants or len(set(s.variants)) != len(s.variants):
        p.append(
            f"study.variants: {s.variants} must name each of {list(VARIANTS)} at most once, at least one; "
            f"e.g. study.variants=[full,ipv]"
        )
    fraction_problems(p, "study.probe_fractions", s.probe_fractions)
    if s.tag:
        check_name(p, "study.tag", s.tag)
    if s.probe_max_steps < 0:
        p.append(f"study.probe_max_steps: {s.probe_max_steps} must be >= 0 (0 = finetune.max_steps)")
    return p
