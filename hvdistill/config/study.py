"""The `study` section: the label-efficiency study `hvdistill study` runs (docs/results.md).

The study pretrains one backbone per entry of `study.variants` (each a loss ablation of the
configured method) and per seed of `study.pretrain_seeds`, plus the same pretraining from a random
(untrained) teacher for each of `study.random_teacher`; the teacher distilled from is
`study.teacher` (trained on the renderer's classes, or class-free on its depth and surface
orientation). Every backbone, and a random initialisation per seed, is then read out the same
ways: fine-tuned at `sweep.label_fractions` (a budget in epochs, `finetune.epochs`, capped by
`finetune.step_cap`) and probed by the frozen-feature probe at `study.probe_fractions`. The
readouts of pretraining seed s use seed s, so every comparison is paired by seed; the paired
statistics (`study.confidence`, `study.bootstrap_resamples`) are fixed here before a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hvdistill.config.downstream import fraction_problems
from hvdistill.config.loader import check_name, check_range

if TYPE_CHECKING:
    from hvdistill.config import Config

# variant -> the loss terms it keeps (the others get weight 0, so their branches are not built)
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": ("ipv", "depth", "bev"),  # HVDistill: IPV + depth + BEV
    "ipv_depth": ("ipv", "depth"),  # HVDistill without the BEV contrast
    "ipv": ("ipv",),  # SLidR-like: image-plane superpixel contrast only
}
RANDOM_TEACHER_SUFFIX = "_random_teacher"  # full -> full_random_teacher: the control of `random_teacher`
TEACHERS = ("classes", "geometry")  # teacher_train.target of the study's teacher


@dataclass(slots=True, kw_only=True)
class StudyConfig:
    """What `hvdistill study` compares, how often, and how the comparisons are decided."""

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # pretrained; random init is added
    pretrain_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # every variant once per seed
    random_teacher: list[str] = field(
        default_factory=lambda: ["full"]
    )  # also pretrained from a random teacher
    teacher: Literal["classes", "geometry"] = "classes"  # what the study's teacher is trained on
    probe_fractions: list[float] = field(default_factory=lambda: [1.0])  # frozen-feature probe; [] = none
    confidence: float = 0.95  # of every interval (t over seeds, bootstrap over held-out scans)
    bootstrap_resamples: int = 2000  # resamples of the held-out scans
    bootstrap_seed: int = 0
    world_side_outputs: bool = True  # write the renderer's side outputs (the synthetic teachers' targets)
    tag: str = ""  # names a second set of readouts on the same pretrainings: finetune-<tag>, study-<tag>.md


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
    if any(v not in s.variants for v in s.random_teacher) or len(set(s.random_teacher)) != len(
        s.random_teacher
    ):
        p.append(
            f"study.random_teacher: {s.random_teacher} must name variants of study.variants ({s.variants}) "
            f"at most once each; [] = no random-teacher control"
        )
    if (
        not s.pretrain_seeds
        or len(set(s.pretrain_seeds)) != len(s.pretrain_seeds)
        or min(s.pretrain_seeds) < 0
    ):
        p.append(
            f"study.pretrain_seeds: {s.pretrain_seeds} must be distinct seeds >= 0, at least one "
            f"(3 or more for an interval over seeds), e.g. study.pretrain_seeds=[0,1,2]"
        )
    fraction_problems(p, "study.probe_fractions", s.probe_fractions)
    check_range(p, "study.confidence", s.confidence, 0.5, 0.999)
    if s.bootstrap_resamples < 100:
        p.append(f"study.bootstrap_resamples: {s.bootstrap_resamples} must be >= 100 (e.g. 2000)")
    if s.tag:
        check_name(p, "study.tag", s.tag)
    return p
