"""The bird's-eye-view grid shared by the LiDAR BEV head and the image lift.

Cells are `resolution` metres square over [x_min, x_min + size * resolution) and likewise y;
a cell's flat index is iy * size + ix (row-major over (Y, X)); -1 marks points outside.
With 0.1 m voxels and a 0.4 m grid the cell of a voxel is its (ix // 4, iy // 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BEVGrid:
    x_min: float = -51.2
    y_min: float = -51.2
    resolution: float = 0.4
    size: int = 256

    @classmethod
    def from_config(cls, geometry) -> BEVGrid:
        """Build from a GeometryConfig (its point_range gives the origin)."""
        return cls(
            geometry.point_range[0], geometry.point_range[1], geometry.bev_resolution, geometry.bev_size
        )

    @property
    def num_cells(self) -> int:
        return self.size * self.size

    def cell_xy(self, xy):
        """(N, 2) metric x, y -> (N, 2) integer (ix, iy); numpy or torch."""
        if isinstance(xy, torch.Tensor):
            origin = torch.tensor([self.x_min, self.y_min], dtype=xy.dtype, device=xy.device)
            return torch.floor((xy[..., :2] - origin) / self.resolution).long()
        origin = np.array([self.x_min, self.y_min])
        return np.floor((np.asarray(xy)[..., :2] - origin) / self.resolution).astype(np.int64)

    def flat_index(self, xy):
        """(..., 2) metric x, y -> (...,) flat cell index iy * size + ix, -1 outside the grid."""
        ij = self.cell_xy(xy)
        ix, iy = ij[..., 0], ij[..., 1]
        inside = (ix >= 0) & (ix < self.size) & (iy >= 0) & (iy < self.size)
        flat = iy * self.size + ix
        if isinstance(flat, torch.Tensor):
            return torch.where(inside, flat, torch.full_like(flat, -1))
        return np.where(inside, flat, -1)

    def voxel_to_flat(self, voxel_ix, voxel_iy, stride: int):
        """Cell of voxels (ix, iy) when the voxel size is resolution / stride."""
        return (voxel_iy // stride) * self.size + (voxel_ix // stride)
