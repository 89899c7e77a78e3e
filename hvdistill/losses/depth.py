"""The depth loss: LiDAR-supervised depth distributions of the lift (BEVDepth style).

Targets live at the depth net's resolution (1/`pool` of the crop, pool = LossConfig.
depth_target_pool = 4): each cell takes the minimum non-zero LiDAR depth of the pairs in its
patch, computed from the pairs directly with a scatter-min instead of a full-resolution depth
image. Feature cell j is centred at pixel pool * j + c (c = FEATURE_CELL_CENTRE = 0, pixel
centres at integer coordinates; see hvdistill/geometry/frustum.py), where the frustum puts its
ray and the IPV upsampling its feature. The patch is centred there: a pair at sub-pixel (u, v)
goes to the cell whose centre is nearest, column floor((u - c) / pool + 1/2), i.e. cell j takes
u in [pool * j + c - pool / 2, pool * j + c + pool / 2), 4 px wide and centred on 4 j exactly.
Whole-pixel windows cannot be centred on a pixel for an even pool ([4j - 2, 4j + 1] is off by
-0.5 px, [4j - 1, 4j + 2] by +0.5 px), so the rule uses the stored sub-pixel coordinates.
Pairs inside the crop but past the last cell centre's half-window (the last pool / 2 - c columns
and rows) take the last cell, as the replicated border of the IPV upsampling does; only pairs
whose pixel (rounded (u, v)) lies outside the crop are dropped. The depth becomes a one-hot over the
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
from hvdistill.geometry.frustum import FEATURE_CELL_CENTRE, depth_to_bin


def depth_targets(
    pair_image: torch.Tensor,
    pair_uv: torch.Tensor,
    pair_depth: torch.Tensor,
    num_images: int,
    grid_height: int,
    grid_width: int,
    pool: int,
    centre: float = FEATURE_CELL_CENTRE,
) -> torch.Tensor:
    """(N_img, Hf, Wf) float32 minimum non-zero pair depth per patch centred on its cell; 0 = none.

    pair_image (Q,), pair_uv (Q, 2) (u = column, v = row, crop pixels), pair_depth (Q,) metres;
    cell j is centred at pixel pool * j + centre (see the module docstring).
    """
    pixel = torch.round(pair_uv).long()  # (Q, 2)
    inside = (pixel >= 0).all(1) & (pixel[:, 0] < grid_width * pool) & (pixel[:, 1] < grid_height * pool)
    nearest = torch.floor((pair_uv.double() - centre) / pool + 0.5).long()  # (Q, 2) nearest cell centre
    col = nearest[:, 0].clamp(0, grid_width - 1)  # (Q,)
    row = nearest[:, 1].clamp(0, grid_height - 1)  # (Q,)
    keep = (pair_depth > 0) & inside
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
