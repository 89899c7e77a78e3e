"""The `probe` section: the frozen-feature probe (hvdistill/eval/probe.py, docs/finetuning.md).

The probe reads the backbone once per scan without augmentation (its BatchNorm statistics
recalibrated on the training scans first), caches the per-point features, and fits two readouts
on them: a class-balanced multinomial logistic regression run to convergence with L-BFGS, and
class prototypes (no optimisation). Which scans, which backbone, the seed and the voxel range
are the `finetune` section's; this section holds only the probe's own numbers, with defaults
sized for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hvdistill.config import Config


@dataclass(slots=True, kw_only=True)
class ProbeConfig:
    """The frozen-feature probe's numbers (docs/finetuning.md, "Frozen-feature probe")."""

    # reset every BatchNorm's running statistics and re-estimate them (cumulative average) in one
    # no-grad pass over the training scans, without augmentation; false = keep the backbone's own
    recalibrate_bn: bool = True
    # labelled points drawn per training scan (seeded by finetune.seed) for the readouts' fit; the
    # fit holds scans x points_per_scan x 96 float64 values in memory
    points_per_scan: int = 2000
    l2: float = 1e-4  # logistic regression: loss += l2 / 2 * ||W||^2 (the bias is not penalised)
    max_iterations: int = 500  # L-BFGS iterations at most
    tolerance: float = 1e-5  # converged when the loss gradient's largest absolute entry is below this
    history: int = 20  # L-BFGS curvature pairs kept (torch's history_size)
    # dtype of the cached held-out voxel features (training features are cached in float32)
    cache_dtype: Literal["float16", "float32"] = "float16"
    reuse_cache: bool = True  # reuse a feature cache in the run directory made with the same settings
    batch_size: int = 0  # scans per forward pass; 0 = finetune.eval_batch_size


def probe_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `probe` section, each with its fix."""
    pr = cfg.probe
    p: list[str] = []
    for key in ("points_per_scan", "max_iterations", "history"):
        if getattr(pr, key) < 1:
            p.append(f"probe.{key}: {getattr(pr, key)} must be >= 1; e.g. probe.{key}=1")
    if pr.l2 < 0:
        p.append(f"probe.l2: {pr.l2} must be >= 0 (0 = no penalty); e.g. probe.l2=1e-4")
    if pr.tolerance <= 0:
        p.append(f"probe.tolerance: {pr.tolerance} must be > 0; e.g. probe.tolerance=1e-5")
    if pr.batch_size < 0:
        p.append(f"probe.batch_size: {pr.batch_size} must be >= 0 (0 = finetune.eval_batch_size)")
    return p
