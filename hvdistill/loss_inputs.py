"""The loss-input type: the features the distiller hands to the losses, and the pair lookup it needs.

A bottom-layer module beside `batch.py` (it imports only torch), so `models/` produces what
`losses/` consumes without either importing the other: the distiller fills a `LossInputs`,
`HybridViewLoss` (hvdistill/losses/total.py) reads it. `pair_superpixel_ids` gives the
superpixel under each point<->pixel pair, which both the distiller and the loss tests build.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossInputs:
    """What the distiller hands to the loss (C = ModelConfig.feature_dim)."""

    pair_point_features: torch.Tensor  # (Q, C) 3D feature of each pair's point (its voxel's)
    pair_superpixel: torch.Tensor  # (Q,) int64 superpixel id of each pair, -1 = none
    image_features: torch.Tensor  # (N_img, C, H, W) 2D features at crop resolution
    superpixels: torch.Tensor  # (N_img, H, W) int64 ids unique across the batch, -1 = none
    depth_logits: torch.Tensor | None = None  # (N_img, D, H / 4, W / 4) before softmax
    pair_image: torch.Tensor | None = None  # (Q',) int64 image of each depth pair (Q' >= Q: may
    # include points outside the voxel crop, which supervise depth only)
    pair_uv: torch.Tensor | None = None  # (Q, 2) (u = column, v = row) crop pixels
    pair_depth: torch.Tensor | None = None  # (Q,) camera depth in metres
    lidar_bev_features: torch.Tensor | None = None  # (K, C) non-empty LiDAR BEV cells
    lidar_bev_indices: torch.Tensor | None = None  # (K, 3) (sample, iy, ix) or (K,) flat
    image_bev: torch.Tensor | None = None  # (B, C, S, S) or flat (B * S * S, C)
    image_bev_occupied: torch.Tensor | None = None  # (B * S * S,) bool cells the lift reached


def pair_superpixel_ids(
    superpixels: torch.Tensor, pair_image: torch.Tensor, pair_uv: torch.Tensor
) -> torch.Tensor:
    """(Q,) int64 superpixel id under each pair's pixel; -1 where there is none.

    superpixels (N_img, H, W); pair_uv (Q, 2) sub-pixel (u = column, v = row) with pixel
    centres at integer coordinates (as hvdistill/geometry/frustum.py), so the pixel is the
    rounded coordinate.
    """
    _, height, width = superpixels.shape
    col = torch.round(pair_uv[:, 0]).long().clamp(0, width - 1)  # (Q,)
    row = torch.round(pair_uv[:, 1]).long().clamp(0, height - 1)  # (Q,)
    return superpixels[pair_image.long(), row, col]
