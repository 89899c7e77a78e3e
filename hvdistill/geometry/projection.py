"""Projection of LiDAR points into camera images with nuscenes-devkit's rules, in float64.

The chain lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera is composed by
`lidar_to_camera_matrix`; `project_points` applies it, divides by depth, and keeps
depth > min_depth, border < u < W - border, border < v < H - border, exactly the filter of
`NuScenesExplorer.map_pointcloud_to_image` (min_dist = 1.0, border = 1 pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdistill.geometry.transforms import invert_transform


@dataclass
class Projection:
    index: np.ndarray  # (M,) int64 indices of kept points
    uv: np.ndarray  # (M, 2) float64 sub-pixel (u = column, v = row)
    depth: np.ndarray  # (M,) float64 camera z in metres


def lidar_to_camera_matrix(
    lidar_to_ego: np.ndarray,
    ego_to_global_lidar: np.ndarray,
    ego_to_global_cam: np.ndarray,
    cam_to_ego: np.ndarray,
) -> np.ndarray:
    """(4, 4) float64 LiDAR (t_lidar) -> camera (t_cam) through the global frame."""
    return (
        invert_transform(cam_to_ego)
        @ invert_transform(ego_to_global_cam)
        @ np.asarray(ego_to_global_lidar, dtype=np.float64)
        @ np.asarray(lidar_to_ego, dtype=np.float64)
    )


def camera_to_pixels(xyz_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixel (u, v); depth must be non-zero."""
    k = np.asarray(intrinsics, dtype=np.float64)
    uvw = xyz_cam @ k.T  # (N, 3)
    return uvw[:, :2] / uvw[:, 2:3]


def project_points(
    points_xyz: np.ndarray,
    lidar_to_camera: np.ndarray,
    intrinsics: np.ndarray,
    width: int,
    height: int,
    min_depth: float = 1.0,
    border: float = 1.0,
) -> Projection:
    """Project (N, 3) LiDAR points into one image; return the kept points with u, v, depth."""
    xyz = np.asarray(points_xyz, dtype=np.float64)[:, :3]
    t = np.asarray(lidar_to_camera, dtype=np.float64)
    cam = xyz @ t[:3, :3].T + t[:3, 3]  # (N, 3) camera frame
    depth = cam[:, 2]
    keep = depth > min_depth
    uv = np.full((len(xyz), 2), np.nan)
    uv[keep] = camera_to_pixels(cam[keep], intrinsics)
    with np.errstate(invalid="ignore"):
        keep &= (uv[:, 0] > border) & (uv[:, 0] < width - border)
        keep &= (uv[:, 1] > border) & (uv[:, 1] < height - border)
    index = np.flatnonzero(keep)
    return Projection(index=index.astype(np.int64), uv=uv[index], depth=depth[index])
