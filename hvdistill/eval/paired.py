"""Paired statistics of the study: is method A's readout better than method B's, seed for seed?

The study pretrains every method once per seed and reads out each backbone of seed s with seed
s, so the unit of replication is the pretraining seed and the comparison is paired by it: for
each seed s, d_s = mIoU(A, s) - mIoU(B, s) on the same readout. Two intervals of the mean
difference, both at `study.confidence` (docs/results.md fixes the rule before any run):
- over seeds: Student's t, mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n) (n >= 2 seeds; with one
  seed there is no interval);
- over held-out scans: a bootstrap that draws the held-out scans with replacement (the same draw
  for every seed and both methods), recomputes each mIoU from the drawn scans' summed confusion
  matrices and takes the percentile interval of the mean difference over seeds. It measures how
  much the verdict depends on which scans were held out; the t interval how much it depends on
  the pretraining and readout seed.
A difference is claimed only when both intervals exclude 0, on the same side (`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hvdistill.eval.metrics import CLASS_SETS


def t_interval(diffs: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `diffs` by Student's t; low = high = nan for fewer than 2."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def batch_miou(counts: np.ndarray, ignore_index: int = 0, class_set: str = "ground_truth") -> np.ndarray:
    """(R,) mIoU of each of R (C, C) confusion matrices, by the rule of metrics.set_mean_iou."""
    if class_set not in CLASS_SETS:
        raise ValueError(f"mIoU class set {class_set!r} is not one of {CLASS_SETS}")
    c = np.asarray(counts, dtype=np.float64)  # (R, C, C)
    tp = np.diagonal(c, axis1=1, axis2=2)  # (R, C)
    gt, pred = c.sum(2), c.sum(1)  # (R, C) rows = ground truth, columns = prediction
    union = gt + pred - tp
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)  # absent class: 0 if counted
    chosen = gt > 0 if class_set == "ground_truth" else np.ones_like(gt, dtype=bool)
    chosen[:, ignore_index] = False
    n = chosen.sum(1)
    return np.divide((iou * chosen).sum(1), n, out=np.full(len(c), np.nan), where=n > 0)


def bootstrap_weights(n_scans: int, resamples: int, seed: int) -> np.ndarray:
    """(R, S) how often each of S scans is drawn in each of R resamples (each row sums to S)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_scans, np.full(n_scans, 1.0 / n_scans), size=resamples).astype(np.float64)


def bootstrap_interval(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    weights: np.ndarray,
    confidence: float,
    ignore_index: int = 0,
    class_set: str = "ground_truth",
) -> tuple[float, float]:
    """Percentile interval of mean_s [mIoU(a_s) - mIoU(b_s)] over resampled scans.

    a, b: per seed, (S, C, C) per-scan confusion counts of the same S scans in the same order;
    weights: (R, S) from `bootstrap_weights`."""
    if len(a) != len(b) or not a:
        raise ValueError(f"bootstrap: {len(a)} and {len(b)} seeds; need the same number, at least one")
    diff = np.zeros(len(weights))  # (R,)
    for sa, sb in zip(a, b):
        if sa.shape != sb.shape or sa.shape[0] != weights.shape[1]:
            raise ValueError(
                f"bootstrap: per-scan counts {sa.shape} and {sb.shape} for {weights.shape[1]} scans"
            )
        ra = np.einsum("rs,scd->rcd", weights, sa.astype(np.float64))  # (R, C, C)
        rb = np.einsum("rs,scd->rcd", weights, sb.astype(np.float64))
        diff += batch_miou(ra, ignore_index, class_set) - batch_miou(rb, ignore_index, class_set)
    diff /= len(a)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.nanpercentile(diff, [tail, 100 - tail])
    return float(lo), float(hi)


def verdict(t_low: float, t_high: float, boot_low: float, boot_high: float) -> str:
    """ "A > B" / "A < B" when both intervals exclude 0 on the same side, else "not shown"."""
    bounds = [t_low, t_high, boot_low, boot_high]
    if any(math.isnan(x) for x in bounds):
        return "not shown"
    if t_low > 0 and boot_low > 0:
        return "A > B"
    if t_high < 0 and boot_high < 0:
        return "A < B"
    return "not shown"


@dataclass
class Comparison:
    """One paired comparison of two methods on one readout (mIoU points as fractions, not %)."""

    readout: str
    a: str
    b: str
    seeds: list[int]
    diffs: list[float]  # per seed, A - B
    mean: float
    t_low: float
    t_high: float
    boot_low: float = math.nan
    boot_high: float = math.nan

    @property
    def verdict(self) -> str:
        return verdict(self.t_low, self.t_high, self.boot_low, self.boot_high)
