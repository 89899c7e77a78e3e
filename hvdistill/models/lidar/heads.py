"""Heads of the 3D student: per-voxel IPV features and BEV features on the 0.4 m grid.

IPV head: a per-voxel linear map (a 1x1x1 conv) planes[7] -> feature_dim, L2-normalised.

BEV head: collapses z onto the BEV grid whose cells are `stride` voxels wide in x and y
(stride = bev_resolution / voxel_size = 4), so voxel (ix, iy) falls in cell
(ix // stride, iy // stride), flat index iy * bev_size + ix as in `geometry/bev.py`. Two variants
(`LidarModelConfig.bev_head`):
- "strided" (the paper): log2(stride) sparse convs with kernel and stride (1, 2, 2) in (z, y, x),
  each + BN (momentum `bn_momentum`, as the backbone's strided convs) + ReLU, bring the sparse
  tensor to the 0.4 m grid in x/y while keeping z; the z-collapse then pools the features of
  each (batch, y, x) column of the result (`bev_pool`: max by default). Each output site of a
  kernel-2 stride-2 conv covers exactly the voxels (2o, 2o + 1), so the non-empty cells are
  those of the input voxels.
- "column": pools the planes[7] voxel features of each (batch, iy // stride, ix // stride)
  column directly (no extra parameters before the projection).
Both end with a linear projection to feature_dim and L2-normalise. Output: (K, feature_dim)
features and (K, 3) int64 (batch, iy, ix) indices of the unique non-empty cells, sorted by
(batch, iy, ix).
"""

from __future__ import annotations

import math

import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.models.lidar.blocks import norm_relu
from hvdistill.models.lidar.sparse import match_conv_algo

_REDUCE = {"max": "amax", "mean": "mean"}


def pool_columns(
    features: torch.Tensor,
    batch: torch.Tensor,
    iy: torch.Tensor,
    ix: torch.Tensor,
    bev_size: int,
    reduce: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (N, C) rows sharing a (batch, iy, ix) cell -> (K, C) features, (K, 3) int64 indices."""
    batch, iy, ix = batch.long(), iy.long(), ix.long()
    key = (batch * bev_size + iy) * bev_size + ix  # (N,)
    cells, inverse = torch.unique(key, sorted=True, return_inverse=True)  # (K,), (N,)
    index = inverse.unsqueeze(1).expand_as(features)  # (N, C)
    out = features.new_zeros(len(cells), features.shape[1])
    pooled = out.scatter_reduce(0, index, features, _REDUCE[reduce], include_self=False)  # (K, C)
    indices = torch.stack(
        [cells // (bev_size * bev_size), (cells // bev_size) % bev_size, cells % bev_size], dim=1
    )  # (K, 3) batch, iy, ix
    return pooled, indices


class IPVHead(nn.Module):
    """(V, C) voxel features -> (V, feature_dim) unit-norm features."""

    def __init__(self, in_channels: int, feature_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, feature_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features), dim=1)  # (V, feature_dim)


class BEVHead(nn.Module):
    """Sparse voxel features -> unit-norm BEV cell features and their (batch, iy, ix) indices."""

    def __init__(
        self,
        in_channels: int,
        feature_dim: int,
        variant: str,
        stride: int,
        bev_size: int,
        pool: str,
        algo: spconv.ConvAlgo | None,
        bn_momentum: float,
    ):
        super().__init__()
        if variant not in ("strided", "column"):
            raise ValueError(f"bev_head must be 'strided' or 'column', got {variant!r}")
        if pool not in _REDUCE:
            raise ValueError(f"bev_pool must be one of {sorted(_REDUCE)}, got {pool!r}")
        self.variant, self.stride, self.bev_size, self.pool = variant, stride, bev_size, pool
        self.reduce_xy = None
        if variant == "strided":
            steps = int(round(math.log2(stride)))
            if 2**steps != stride:
                raise ValueError(f"the strided BEV head needs a power-of-two stride, got {stride}")
            layers: list[nn.Module] = []
            for _ in range(steps):
                layers.append(
                    spconv.SparseConv3d(
                        in_channels, in_channels, (1, 2, 2), stride=(1, 2, 2), bias=False, algo=algo
                    )
                )
                layers.extend(norm_relu(in_channels, bn_momentum))
            self.reduce_xy = spconv.SparseSequential(*layers)
        self.proj = nn.Linear(in_channels, feature_dim)

    def collapse(self, x: spconv.SparseConvTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (V, C) on (batch, z, y, x) voxel sites -> pooled (K, C), indices (K, 3) int64."""
        if self.reduce_xy is not None:
            match_conv_algo(self.reduce_xy, x.features.device)
            x = self.reduce_xy(x)  # (V', C) on (batch, z, y // stride, x // stride)
            iy, ix = x.indices[:, 2], x.indices[:, 3]
        else:
            iy = torch.div(x.indices[:, 2], self.stride, rounding_mode="floor")
            ix = torch.div(x.indices[:, 3], self.stride, rounding_mode="floor")
        return pool_columns(x.features, x.indices[:, 0], iy, ix, self.bev_size, self.pool)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, C) pooled column features -> (K, feature_dim) unit-norm features."""
        return F.normalize(self.proj(pooled), dim=1)

    def forward(self, x: spconv.SparseConvTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (V, C) on (batch, z, y, x) voxel sites -> (K, feature_dim), (K, 3) int64."""
        pooled, indices = self.collapse(x)
        return self.project(pooled), indices
