"""The depth loss: LiDAR-supervised depth distributions of the lift (BEVDepth style).

Targets live at the depth net's resolution, the teacher's feature grid (pool =
LossConfig.depth_target_pool = the teacher's stride: 4 for the paper's ResNet, 14 for a ViT):
each cell takes the minimum non-zero LiDAR depth of the pairs in its patch, computed from the
pairs directly with a scatter-min instead of a full-resolution depth image. Feature cell j is
centred at pixel pool * j + c (c = the grid's centre: 0 for the ResNets, 6.5 for a ViT/14;
pixel centres at integer coordinates; see hvdistill/geometry/frustum.py: `FeatureGrid`), where
the frustum puts its ray and the IPV upsampling its feature. The patch is centred there: a pair
at sub-pixel (u, v) goes to the cell whose centre is nearest, column floor((u - c) / pool + 1/2),
i.e. cell j takes u in [pool * j + c - pool / 2, pool * j + c + pool / 2), pool px wide and
centred on the cell exactly (4 j for the ResNets). Whole-pixel windows cannot be centred on a
pixel for an even pool ([4j - 2, 4j + 1] is off by -0.5 px, [4j - 1, 4j + 2] by +0.5 px), so the
rule uses the stored sub-pixel coordinates. Pairs inside the crop but past the last cell
centre's half-window take the last cell, as the replicated border of the IPV upsampling does;
only pairs whose pixel (rounded (u, v)) lies outside the crop are dropped. The grid holds only
cells centred inside the crop (`FeatureGrid.cells`): a ViT's padding never makes a cell of its
own, so no target sits on padded pixels. The depth becomes a one-hot over the bins
[depth_min, depth_max) in depth_step steps (`depth_to_bin`); cells without a point, or whose
depth falls outside the bins, are not counted.

The loss is the binary cross-entropy between softmax(depth logits) and the one-hot targets,
in fp32 with autocast disabled, with the true bin's term taken from log_softmax so a saturated
softmax keeps its gradient (`saturation_safe_bce`). Reduction (LossConfig.depth_reduction):
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
from hvdistill.geometry.frustum import RESNET_CELL_CENTRE, depth_to_bin

BCE_LOG_FLOOR = -100.0  # log(1 - p) floor of the wrong bins, as torch's binary_cross_entropy clamps


def depth_targets(
    pair_image: torch.Tensor,
    pair_uv: torch.Tensor,
    pair_depth: torch.Tensor,
    num_images: int,
    grid_height: int,
    grid_width: int,
    pool: int,
    centre: float = RESNET_CELL_CENTRE,
    crop: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(N_img, Hf, Wf) float32 minimum non-zero pair depth per patch centred on its cell; 0 = none.

    pair_image (Q,), pair_uv (Q, 2) (u = column, v = row, crop pixels), pair_depth (Q,) metres;
    cell j is centred at pixel pool * j + centre (see the module docstring). `crop` (H, W) is the
    crop's size in pixels, by default the grid's (pool * Hf, pool * Wf), as for a ResNet.
    """
    crop_h, crop_w = crop if crop is not None else (grid_height * pool, grid_width * pool)
    pixel = torch.round(pair_uv).long()  # (Q, 2)
    inside = (pixel >= 0).all(1) & (pixel[:, 0] < crop_w) & (pixel[:, 1] < crop_h)
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


def saturation_safe_bce(log_prob: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Summed BCE of probabilities exp(log_prob) (V, D) against a one-hot (V, D) bool target.

    Equal to `F.binary_cross_entropy(prob, onehot, reduction="sum")` wherever that is finite and
    unclamped. The difference is the true bin's term: it is -log_softmax, never clamped, so a
    softmax saturated on a wrong bin (probability 0 at the true bin) still has the gradient that
    pulls it back. With the clamped log of `F.binary_cross_entropy` (log(p) >= -100) both terms
    of such a cell have zero gradient and the depth net stays stuck; measured in the study
    (docs/results.md): the full method's depth loss jumped to 3.25 (every cell saturated on a wrong
    bin) around step 60 and never moved again. Wrong bins keep the clamped log(1 - p) (their
    gradient vanishes only when they hold all the mass, and the true bin's term carries it then).
    """
    positive = -log_prob[onehot].sum()  # -log p_t over valid cells
    p = log_prob[~onehot].exp()  # (V * (D - 1),) wrong-bin probabilities
    below_one = p < 1.0  # p == 1 in fp32: log(1 - p) = -inf, clamped, gradient 0 (not 0 * inf)
    safe = torch.where(below_one, p, torch.zeros_like(p))
    log_q = torch.where(below_one, torch.log1p(-safe), torch.full_like(p, BCE_LOG_FLOOR))
    return positive - log_q.clamp(min=BCE_LOG_FLOOR).sum()


def depth_bins(
    targets: torch.Tensor, depth_min: float, depth_max: float, depth_step: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Hf, Wf) int64 bin of each target cell and (N, Hf, Wf) bool: counted (a depth inside the bins)."""
    bins = depth_to_bin(targets, depth_min, depth_max, depth_step)  # (N, Hf, Wf)
    return bins, (targets > 0) & (bins >= 0)


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
    sizes: list[int] | None = None,
) -> DepthLossResult:
    """BCE of softmax(depth_logits (N, D, Hf, Wf)) against one-hot bins of targets (N, Hf, Wf).

    `sizes`: every rank's valid-cell count (`depth_bins`), in rank order, when the caller has
    exchanged them already; otherwise they are exchanged here (a collective with a process group).
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
    bins, valid = depth_bins(targets, depth_min, depth_max, depth_step)  # (N, Hf, Wf) each
    with torch.autocast(device_type=depth_logits.device.type, enabled=False):
        log_prob = torch.log_softmax(depth_logits.float(), dim=1)  # (N, D, Hf, Wf)
        log_prob = log_prob.permute(0, 2, 3, 1)[valid]  # (V, D)
        onehot = F.one_hot(bins[valid], n_bins).bool()  # (V, D)
        total = saturation_safe_bce(log_prob, onehot)
    if sizes is None:
        sizes = dist.all_gather_sizes(valid.sum(), targets.device)
    per = float(n_bins) if reduction == "cells_x_bins" else 1.0
    return DepthLossResult(loss=total / (max(float(sum(sizes)), 1.0) * per), num_cells=sizes[dist.rank()])
