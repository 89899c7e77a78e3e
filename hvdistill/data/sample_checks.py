"""Range checks every sample read from a shard passes before augmentation or collate sees it.

`decode_sample` (hvdistill/data/schema.py) calls `check_sample` last, so a sample that reaches
augmentation has: finite points, labels one per point, at least one camera, every image within
`DecodeLimits` and its superpixel map of the same size with ids in [0, H*W) or -1, a pinhole K
(fx, fy > 0, zero skew row, last row [0, 0, 1]), rigid 4x4 transforms (finite, last row
[0, 0, 0, 1], rotation orthonormal up to the rounding of the source files), and pairs whose
point index < N, camera index < number of cameras, pixel (u, v) inside its camera's image
(pixel centres at integers: -0.5 <= u < W - 0.5) and depth finite and > 0. Any violation is a
`SchemaError` naming the member, so the reader counts and skips the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdistill.config import DataConfig
from hvdistill.data.sample import Sample

# How far R @ R.T of a stored rotation may stray from the identity: sources store rotations
# with ~7 significant digits (SemanticKITTI poses.txt); garbage is far beyond this.
RIGID_TOLERANCE = 1e-3
_PIXEL_HALF = 0.5  # pixel centres at integers: pixel i covers [i - 0.5, i + 0.5)


class SchemaError(ValueError):
    """A shard member is missing, malformed, out of range, or has the wrong dtype/shape."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds checked before anything is allocated: the largest image a shard may store."""

    max_width: int
    max_height: int

    @classmethod
    def from_config(cls, cfg: DataConfig) -> DecodeLimits:
        """Stored images never exceed data.stored_image_width x data.stored_image_height."""
        return cls(int(cfg.stored_image_width), int(cfg.stored_image_height))

    def check_size(self, width: int, height: int, what: str) -> None:
        if not (0 < width <= self.max_width and 0 < height <= self.max_height):
            raise SchemaError(
                f"{what}: image size {width}x{height} is outside 1..{self.max_width} x "
                f"1..{self.max_height} (data.stored_image_width / data.stored_image_height)"
            )


def check_intrinsics(k: np.ndarray, what: str) -> None:
    """A finite pinhole K: fx, fy > 0, K[1, 0] = 0 and last row [0, 0, 1] (so K is invertible)."""
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise SchemaError(f"{what}: expected a finite (3, 3) K, got shape {k.shape}")
    if not (k[0, 0] > 0 and k[1, 1] > 0 and k[1, 0] == 0 and np.array_equal(k[2], [0.0, 0.0, 1.0])):
        raise SchemaError(
            f"{what}: not a pinhole K (fx, fy > 0, K[1,0] = 0, last row [0, 0, 1]): {k.tolist()}"
        )


def check_rigid(t: np.ndarray, what: str) -> None:
    """A finite (4, 4) rigid transform: last row [0, 0, 0, 1], orthonormal rotation."""
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise SchemaError(f"{what}: expected a finite (4, 4) transform, got shape {t.shape}")
    if not np.array_equal(t[3], [0.0, 0.0, 0.0, 1.0]):
        raise SchemaError(f"{what}: last row {t[3].tolist()} is not [0, 0, 0, 1]")
    r = t[:3, :3]
    if np.abs(r @ r.T - np.eye(3)).max() > RIGID_TOLERANCE:
        raise SchemaError(f"{what}: rotation part is not orthonormal (not a rigid transform)")


def check_superpixels(ids: np.ndarray, width: int, height: int, what: str) -> None:
    """(H, W) int16 ids, each -1 (none) or in [0, H*W)."""
    if ids.shape != (height, width) or ids.dtype != np.int16:
        raise SchemaError(f"{what}: expected ({height}, {width}) int16, got {ids.dtype} {ids.shape}")
    if ids.size and (int(ids.min()) < -1 or int(ids.max()) >= width * height):
        raise SchemaError(f"{what}: superpixel ids outside [-1, {width * height})")


def check_pairs(pairs: np.ndarray, n_points: int, sizes: list[tuple[int, int]]) -> None:
    """(M, 5) float32 pairs: integral point index < N and camera index < n_cam, pixel inside
    that camera's image, depth finite and > 0."""
    if pairs.ndim != 2 or pairs.shape[1] != 5 or not np.all(np.isfinite(pairs)):
        raise SchemaError(f"pairs.npy: expected finite (M, 5), got shape {pairs.shape}")
    point, cam = pairs[:, 0], pairs[:, 1]
    if np.any(point != np.floor(point)) or np.any((point < 0) | (point >= n_points)):
        raise SchemaError(f"pairs.npy: point indices must be integers in [0, {n_points})")
    if np.any(cam != np.floor(cam)) or np.any((cam < 0) | (cam >= len(sizes))):
        raise SchemaError(f"pairs.npy: camera indices must be integers in [0, {len(sizes)})")
    size = np.asarray(sizes, dtype=np.float64)[cam.astype(np.int64)]  # (M, 2) width, height
    u, v = pairs[:, 3].astype(np.float64), pairs[:, 2].astype(np.float64)
    inside = (u >= -_PIXEL_HALF) & (u < size[:, 0] - _PIXEL_HALF)
    inside &= (v >= -_PIXEL_HALF) & (v < size[:, 1] - _PIXEL_HALF)
    if not np.all(inside):
        raise SchemaError(f"pairs.npy: {int((~inside).sum())} pairs fall outside their camera's image")
    if np.any(pairs[:, 4] <= 0):
        raise SchemaError("pairs.npy: depths must be > 0")


def check_sample(sample: Sample, limits: DecodeLimits) -> None:
    """Raise SchemaError unless `sample` is safe for augmentation and collate (see module doc)."""
    points = sample.points
    if points.dtype != np.float32 or points.ndim != 2 or points.shape[1] != 4:
        raise SchemaError(f"points.npy: expected float32 (N, 4), got {points.dtype} {points.shape}")
    if not np.all(np.isfinite(points)):
        raise SchemaError("points.npy: points contain NaN or infinite values")
    if sample.labels is not None and sample.labels.shape != (len(points),):
        raise SchemaError(f"labels.npy: {sample.labels.shape} labels for {len(points)} points")
    if not sample.cameras:
        raise SchemaError("calib.json: a sample needs at least one camera")
    check_rigid(sample.lidar_to_ego, "calib.json lidar_to_ego")
    check_rigid(sample.ego_to_global, "calib.json ego_to_global")
    for i, cam in enumerate(sample.cameras):
        width, height = cam.size
        limits.check_size(width, height, f"cam{i}.jpg")
        if cam.image.shape != (height, width, 3) or cam.image.dtype != np.uint8:
            raise SchemaError(
                f"cam{i}.jpg: expected uint8 (H, W, 3), got {cam.image.dtype} {cam.image.shape}"
            )
        if cam.superpixels is None:
            raise SchemaError(f"cam{i}.sp.png: missing (augmentation needs superpixels)")
        check_superpixels(cam.superpixels, width, height, f"cam{i}.sp.png")
        check_intrinsics(cam.intrinsics, f"calib.json cam{i} intrinsics")
        check_rigid(cam.cam_to_ego, f"calib.json cam{i} cam_to_ego")
        check_rigid(cam.ego_to_global, f"calib.json cam{i} ego_to_global")
    if sample.pairs is None:
        raise SchemaError("pairs.npy: missing (augmentation needs pairs)")
    check_pairs(sample.pairs, len(points), [c.size for c in sample.cameras])
