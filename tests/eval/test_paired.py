"""The study's paired statistics: the t interval, the vectorised mIoU, the bootstrap over scans and
the rule that claims a difference only when both intervals exclude 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hvdistill.eval.metrics import set_mean_iou
from hvdistill.eval.paired import batch_miou, bootstrap_interval, bootstrap_weights, t_interval, verdict


def test_t_interval_matches_the_textbook_value():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0], 0.95)  # sd 1, n 3: t(0.975, 2) = 4.3027
    assert mean == 2.0 and hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert lo == pytest.approx(2 * mean - hi)
    assert all(math.isnan(v) for v in t_interval([1.0], 0.95)[1:])  # one seed: no interval


@pytest.mark.parametrize("class_set", ["ground_truth", "all"])
def test_batch_miou_equals_the_metrics_rule(class_set):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(6, 5, 5))
    counts[:, 3, :] = 0  # a class absent from the ground truth
    counts[0, :, 2] = 0  # ... and one never predicted
    want = [set_mean_iou(c, 0, class_set) for c in counts]
    assert batch_miou(counts, 0, class_set) == pytest.approx(want)


def test_bootstrap_weights_redraw_every_scan_count():
    w = bootstrap_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all()
    assert (w == bootstrap_weights(7, 50, seed=3)).all()


def _scans(n: int, correct: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) per-scan counts of a 2-class problem (class 0 = ignore), `correct` of points right."""
    out = np.zeros((n, 3, 3), dtype=np.int64)
    for s in range(n):
        for c in (1, 2):
            right = rng.binomial(100, correct)
            out[s, c, c], out[s, c, 3 - c] = right, 100 - right
    return out


def test_the_bootstrap_interval_is_zero_for_equal_methods_and_positive_for_a_better_one():
    rng = np.random.default_rng(1)
    a, b = [_scans(20, 0.9, rng) for _ in range(3)], [_scans(20, 0.6, rng) for _ in range(3)]
    w = bootstrap_weights(20, 300, seed=0)
    assert bootstrap_interval(a, a, w, 0.95) == (0.0, 0.0)
    lo, hi = bootstrap_interval(a, b, w, 0.95)
    assert 0 < lo < hi < 1
    with pytest.raises(ValueError, match="per-scan counts"):
        bootstrap_interval(a, [x[:10] for x in b], w, 0.95)


def test_a_difference_is_claimed_only_when_both_intervals_exclude_zero():
    assert verdict(0.1, 0.3, 0.05, 0.2) == "A > B"
    assert verdict(-0.3, -0.1, -0.2, -0.01) == "A < B"
    assert verdict(0.1, 0.3, -0.01, 0.2) == "not shown"  # the scans do not support it
    assert verdict(-0.1, 0.3, 0.05, 0.2) == "not shown"  # the seeds do not
    assert verdict(0.1, 0.3, math.nan, math.nan) == "not shown"  # no bootstrap: no claim
