"""Builders for the matrices that record augmentations, so geometry can be undone exactly.

LiDAR: a (4, 4) matrix M mapping un-augmented to augmented LiDAR coordinates,
M = T(translation) @ S(scale) @ Rz(yaw) @ F(flips): flips first, translation last.

Images: a (3, 3) matrix A mapping homogeneous pixel coordinates (u = column, v = row, integer
values at pixel centres) of the source image to those of the augmented image. A crop box
[x0, x0 + w) x [y0, y0 + h) (pixel edges) resized to W_out x H_out with half-pixel-centre
sampling (PIL, and torch `interpolate(..., align_corners=False)`) maps
u' = (u + 0.5 - x0) * W_out / w - 0.5; a horizontal flip then maps u'' = W_out - 1 - u'.
"""

from __future__ import annotations

import numpy as np

from hvdistill.geometry.transforms import yaw_rotation


def lidar_augmentation_matrix(
    yaw: float = 0.0,
    scale: float = 1.0,
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0),
    flip_x: bool = False,
    flip_y: bool = False,
) -> np.ndarray:
    """(4, 4) float64: flip x (x -> -x) and/or y, rotate by yaw, scale, then translate."""
    flips = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = scale * yaw_rotation(yaw) @ flips
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def image_augmentation_matrix(
    crop_box: tuple[float, float, float, float],
    out_size: tuple[int, int],
    flip: bool = False,
) -> np.ndarray:
    """(3, 3) float64 for crop (x0, y0, w, h) -> resize to (W_out, H_out) -> optional h-flip."""
    x0, y0, w, h = (float(c) for c in crop_box)
    out_w, out_h = out_size
    sx, sy = out_w / w, out_h / h
    a = np.array(
        [
            [sx, 0.0, (0.5 - x0) * sx - 0.5],
            [0.0, sy, (0.5 - y0) * sy - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    if flip:
        a = np.array([[-1.0, 0.0, out_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ a
    return a


def resize_matrix(src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) pixel map of a whole-image resize from (W, H) to (W', H')."""
    return image_augmentation_matrix((0.0, 0.0, src_size[0], src_size[1]), dst_size)


def transform_pixels(matrix: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) pixel map to (N, 2) (u, v) coordinates."""
    m = np.asarray(matrix, dtype=np.float64)
    return uv @ m[:2, :2].T + m[:2, 2]


def resize_intrinsics(
    intrinsics: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]
) -> np.ndarray:
    """K of an image resized from (W, H) to (W', H'): K' = R @ K (R from `resize_matrix`)."""
    return resize_matrix(src_size, dst_size) @ np.asarray(intrinsics, dtype=np.float64)
