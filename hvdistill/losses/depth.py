"""The depth loss: LiDAR-supervised depth distributions of the lift (BEVDepth style).

Targets live at the depth net's resolution (1/`pool` of the crop, pool = LossConfig.
depth_target_pool = 4): each cell takes the minimum non-zero LiDAR depth of the pairs whose
pixel falls in its `pool` x `pool` patch (pixel = rounded (u, v), pixel centres at integer
coordinates as in hvdistill/geometry/frustum.py), computed from the pairs directly with a
scatter-min instead of a full-resolution depth image. The depth becomes a one-hot over the
bins [depth_min, depth_max) in depth_step steps (`depth_to_bin`); cells without a point, or
whose depth falls outside the bins, are not counted.

The loss is the binary cross-entropy between softmax(depth logits) and the one-hot targets,
in fp32 with autocast disabled. Reduction (LossConfig.depth_reduction):
- "cells_x_bins" (default): mean over valid cells x bins (each valid cell contributes its
  D bin terms; divided by valid cells x D);
- "cells": BEVDepth's `get_depth_loss`: sum over bins, mean over valid cells (D times larger).
Across ranks the count is global (see hvdistill/losses/infonce.py, "Normalisation").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hvdistill import dist
from hvdistill.geometry.frustum import depth_to_bin


def depth_targets(
    pair_image: torch.Tensor,
    pair_uv: torch.Tensor,
    pair_depth: torch.Tensor,
    num_images: int,
    grid_height: int,
    grid_width: int,
    pool: int,
) -> torch.Tensor:
    """(N_img, Hf, Wf) float32 minimum non-zero pair depth per pool x pool patch; 0 = none.

    pair_image (Q,), pair_uv (Q, 2) (u = column, v = row, crop pixels), pair_depth (Q,) metres.
    """
    col = torch.round(pair_uv[:, 0]).long() // pool  # (Q,)
    row = torch.round(pair_uv[:, 1]).long() // pool  # (Q,)
    keep = (pair_depth > 0) & (col >= 0) & (col < grid_width) & (row >= 0) & (row < grid_height)
    cell = (pair_image.long() * grid_height + row) * grid_width + col  # (Q,)
    n_cells = num_images * grid_height * grid_width
    best = torch.full((n_cells,), float("inf"), device=pair_depth.device)  # (N*Hf*Wf,)
    best = best.scatter_reduce(0, cell[keep], pair_depth[keep].float(), reduce="amin")
    best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
    return best.reshape(num_images, grid_height, grid_width)


@dataclass
class DepthLossResult:
    loss: torch.Tensor  # scalar, this rank's share (global normalisation)
    num_cells: int  # valid cells on this rank


def depth_loss(
    depth_logits: torch.Tensor,
    targets: torch.Tensor,
    depth_min: float,
    depth_max: float,
    depth_step: float,
    reduction: str = "cells_x_bins",
) -> DepthLossResult:
    """BCE of softmax(depth_logits (N, D, Hf, Wf)) against one-hot bins of targets (N, Hf, Wf).

    Collective with a process group (the valid-cell count is summed over ranks).
    """
    if reduction not in ("cells_x_bins", "cells"):
        raise ValueError(f"depth reduction {reduction!r}: use 'cells_x_bins' or 'cells'")
    n_bins = depth_logits.shape[1]
    expected = int(round((depth_max - depth_min) / depth_step))
    if n_bins != expected:
        raise ValueError(
            f"depth logits have {n_bins} bins but [{depth_min}, {depth_max}) in "
            f"{depth_step} m steps gives {expected}; make the depth net and "
            "geometry.depth_* agree"
        )
    bins = depth_to_bin(targets, depth_min, depth_max, depth_step)  # (N, Hf, Wf)
    valid = (targets > 0) & (bins >= 0)  # (N, Hf, Wf)
    with torch.autocast(device_type=depth_logits.device.type, enabled=False):
        prob = torch.softmax(depth_logits.float(), dim=1)  # (N, D, Hf, Wf)
        prob = prob.permute(0, 2, 3, 1)[valid]  # (V, D)
        onehot = F.one_hot(bins[valid], n_bins).float()  # (V, D)
        total = F.binary_cross_entropy(prob, onehot, reduction="sum")
    n_valid = int(valid.sum())
    count = dist.all_reduce_sum(torch.tensor(float(n_valid), device=targets.device))
    per = float(n_bins) if reduction == "cells_x_bins" else 1.0
    return DepthLossResult(loss=total / (max(float(count), 1.0) * per), num_cells=n_valid)
