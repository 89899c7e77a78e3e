"""Cartesian voxelisation: crop, 0.1 m voxels, one kept point per voxel, inverse index.

The same voxelisation must be used in pretraining and fine-tuning, or pretrained weights do
not transfer; both call `voxelize`. Voxel integer coordinates are (ix, iy, iz) with
ix = floor((x - xmin) / voxel_size); the crop keeps xmin <= x < xmax (likewise y, z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Voxelization:
    in_range: np.ndarray  # (N,) bool, points inside the crop
    point_index: np.ndarray  # (N_in,) int64 indices of in-range points into the input
    coords: np.ndarray  # (V, 3) int32 voxel (ix, iy, iz), sorted by linear index
    kept: np.ndarray  # (V,) int64 input index of the one point kept per voxel (the first)
    inverse: np.ndarray  # (N_in,) int64 voxel of each in-range point
    spatial_shape: tuple[int, int, int]  # (X, Y, Z) cells


def grid_shape(point_range: list[float], voxel_size: float) -> tuple[int, int, int]:
    """Number of voxels along x, y, z for a [xmin, ymin, zmin, xmax, ymax, zmax] crop."""
    lo, hi = np.asarray(point_range[:3]), np.asarray(point_range[3:])
    return tuple(int(n) for n in np.round((hi - lo) / voxel_size).astype(np.int64))


def voxelize(points_xyz: np.ndarray, voxel_size: float, point_range: list[float]) -> Voxelization:
    """Voxelise (N, >=3) points; the kept point of a voxel is its first point in input order."""
    xyz = np.asarray(points_xyz)[:, :3].astype(np.float64)
    lo = np.asarray(point_range[:3], dtype=np.float64)
    shape = grid_shape(point_range, voxel_size)
    finite = np.all(np.isfinite(xyz), axis=1)
    xyz = np.where(finite[:, None], xyz, lo - voxel_size)  # non-finite points fall outside
    idx = np.floor((xyz - lo) / voxel_size).astype(np.int64)  # (N, 3)
    in_range = finite & np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    point_index = np.flatnonzero(in_range)
    idx = idx[point_index]
    linear = (idx[:, 0] * shape[1] + idx[:, 1]) * shape[2] + idx[:, 2]
    _, first, inverse = np.unique(linear, return_index=True, return_inverse=True)
    return Voxelization(
        in_range=in_range,
        point_index=point_index,
        coords=idx[first].astype(np.int32),
        kept=point_index[first],
        inverse=inverse.reshape(-1).astype(np.int64),
        spatial_shape=shape,
    )
