"""The point strata every evaluation also scores: camera view and horizontal range.

- `in_view` / `out_view`: whether a point projects into some camera image, i.e. its index appears
  in the record's `pairs.npy` (hvdistill/eval/scans.py). A scan without `pairs.npy` has no known
  view: its points are in neither view stratum (they still count in the overall matrix and the
  range strata), so in_view + out_view covers exactly the scans with pairs.
- `range_<lo>_<hi>`: the horizontal distance sqrt(x^2 + y^2) from the LiDAR origin, in the LiDAR
  frame of the stored points (never augmented), binned by `finetune.range_edges` (default
  [20, 40]: range_0_20, range_20_40, range_40_inf; edges printed with :g). Bins are half-open,
  [lo, hi): a point at exactly 20 m falls in range_20_40. The range strata partition all points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIEW_STRATA = ("in_view", "out_view")


def range_names(range_edges: Sequence[float]) -> list[str]:
    """["range_0_20", "range_20_40", "range_40_inf"] for edges [20, 40]."""
    bounds = [0.0, *range_edges]
    return [
        f"range_{lo:g}_{hi:g}" if hi is not None else f"range_{lo:g}_inf"
        for lo, hi in zip(bounds, [*range_edges, None])
    ]


def stratum_names(range_edges: Sequence[float]) -> list[str]:
    """The view strata then the range strata, in the order every report lists them."""
    return [*VIEW_STRATA, *range_names(range_edges)]


def horizontal_distance(xyz: np.ndarray) -> np.ndarray:
    """(N, >= 2) x, y, ... -> (N,) float32 sqrt(x^2 + y^2)."""
    xy = np.asarray(xyz, dtype=np.float64)[:, :2]  # (N, 2)
    return np.hypot(xy[:, 0], xy[:, 1]).astype(np.float32)


def strata_masks(
    distance: np.ndarray,
    in_view: np.ndarray,
    view_known: np.ndarray | bool,
    range_edges: Sequence[float],
) -> dict[str, np.ndarray]:
    """Stratum name -> (N,) bool, from (N,) distances, (N,) in-view flags and whether each point's
    view is known ((N,) bool or one bool); a point of unknown view is in no view stratum."""
    distance = np.asarray(distance)  # (N,)
    in_view = np.asarray(in_view, dtype=bool)  # (N,)
    known = np.broadcast_to(np.asarray(view_known, dtype=bool), in_view.shape)  # (N,)
    masks = {"in_view": in_view & known, "out_view": ~in_view & known}
    bins = np.searchsorted(np.asarray(range_edges, dtype=np.float64), distance, side="right")  # (N,)
    for i, name in enumerate(range_names(range_edges)):
        masks[name] = bins == i
    return masks


def point_strata(
    xyz: np.ndarray, in_view: np.ndarray | None, range_edges: Sequence[float]
) -> dict[str, np.ndarray]:
    """Stratum name -> (N,) bool for one scan's (N, >= 2) points; `in_view` None = unknown view."""
    n = len(xyz)
    view = np.zeros(n, dtype=bool) if in_view is None else np.asarray(in_view, dtype=bool)
    if len(view) != n:
        raise ValueError(f"{len(view)} in-view flags for {n} points")
    return strata_masks(horizontal_distance(xyz), view, in_view is not None, range_edges)
