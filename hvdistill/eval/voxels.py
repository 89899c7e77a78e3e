"""Downstream augmentation, voxelisation with per-point inverse indices, and the segmentation batch.

Augmentation (training only; SLidR's downstream transforms): yaw ~ U(0, rotation_degrees)
about z, then x and y each negated with probability `flip_probability`, then an optional
uniform scale in `scale_range` ([1, 1] = none). Only x, y, z change; intensity is untouched.

Voxelisation is `geometry.voxel.voxelize`, the pretraining's (0.1 m voxels of
`geometry.voxel_size`, the first point of a voxel kept, its intensity the voxel's feature), over
`finetune.point_range`, which covers the evaluation data instead of the pretraining crop. Each
point keeps the index of its voxel (`point_to_voxel`, -1 for a point outside the range), so
predictions go back to every point. A voxel is trained with the label of its kept point (as
SLidR does); evaluation is per point.

`collate_scans` offsets voxel and point indices per scan, writes voxel coordinates in spconv's
(batch, z, y, x) order with spatial shape [Z, Y, X] and drops bad scans (`None`), counting them.
Each point also carries what the stratified scores need (hvdistill/eval/strata.py): its scan
(`point_scan`, an index into `keys`), its horizontal distance from the LiDAR origin in the stored,
unaugmented frame (`point_distance`), and whether it projects into a camera (`point_in_view`);
a scan without pairs.npy has every point's `point_in_view` False and `scan_has_view` False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hvdistill.config import FinetuneConfig
from hvdistill.eval.scans import LabelledScan
from hvdistill.eval.strata import horizontal_distance
from hvdistill.geometry.voxel import grid_shape, voxelize


@dataclass
class VoxelScan:
    """One scan voxelised: what the model sees and what evaluation scores."""

    key: str
    coords: np.ndarray  # (V, 3) int32 ix, iy, iz
    features: np.ndarray  # (V, 1) float32 intensity of the kept point
    voxel_labels: np.ndarray  # (V,) int64 label of the kept point
    point_to_voxel: np.ndarray  # (N,) int64 voxel of each point, -1 outside finetune.point_range
    point_labels: np.ndarray  # (N,) int64 every point's label
    point_distance: np.ndarray  # (N,) float32 sqrt(x^2 + y^2) of the stored (unaugmented) point
    point_in_view: np.ndarray  # (N,) bool projects into a camera (all False when `has_view` is False)
    has_view: bool  # the record had pairs.npy: `point_in_view` is known


@dataclass
class SegBatch:
    """Scans of one batch, offset-batched (shapes per field)."""

    voxel_coords: torch.Tensor  # (V, 4) int32 (batch, z, y, x)
    voxel_features: torch.Tensor  # (V, 1) float32
    voxel_labels: torch.Tensor  # (V,) int64
    point_to_voxel: torch.Tensor  # (P,) int64 into the batch's voxels, -1 outside the range
    point_labels: torch.Tensor  # (P,) int64
    spatial_shape: list[int]  # [Z, Y, X]
    batch_size: int
    point_scan: torch.Tensor  # (P,) int64 index of each point's scan in `keys`
    point_distance: torch.Tensor  # (P,) float32 horizontal distance from the LiDAR origin
    point_in_view: torch.Tensor  # (P,) bool projects into a camera (False where the view is unknown)
    scan_has_view: torch.Tensor  # (B,) bool the scan had pairs.npy
    keys: list[str] = field(default_factory=list)
    bad: int = 0  # scans of this batch that could not be used

    def to(self, device: torch.device | str) -> SegBatch:
        moved = {name: getattr(self, name).to(device) for name in _TENSORS}
        return SegBatch(
            **moved,
            spatial_shape=self.spatial_shape,
            batch_size=self.batch_size,
            keys=self.keys,
            bad=self.bad,
        )


_TENSORS = (  # the SegBatch fields `to` moves
    "voxel_coords",
    "voxel_features",
    "voxel_labels",
    "point_to_voxel",
    "point_labels",
    "point_scan",
    "point_distance",
    "point_in_view",
    "scan_has_view",
)


def augment_xyz(xyz: np.ndarray, ft: FinetuneConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) -> (N, 3) float64: random yaw, flips of x and y, optional uniform scale."""
    yaw = math.radians(rng.uniform(0.0, ft.rotation_degrees))
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out = np.asarray(xyz, dtype=np.float64) @ rot.T  # (N, 3)
    for axis in (0, 1):
        if rng.random() < ft.flip_probability:
            out[:, axis] = -out[:, axis]
    lo, hi = ft.scale_range
    return out * rng.uniform(lo, hi) if hi > lo else out * lo


def voxelize_scan(
    scan: LabelledScan,
    voxel_size: float,
    point_range: list[float],
    ft: FinetuneConfig | None = None,
    rng: np.random.Generator | None = None,
) -> VoxelScan:
    """Voxelise one scan (augmented first when `ft` and `rng` are given)."""
    xyz = scan.points[:, :3].astype(np.float64)  # (N, 3)
    if ft is not None and rng is not None:
        xyz = augment_xyz(xyz, ft, rng)
    vox = voxelize(xyz, voxel_size, point_range)
    point_to_voxel = np.full(len(xyz), -1, dtype=np.int64)
    point_to_voxel[vox.point_index] = vox.inverse
    labels = scan.labels.astype(np.int64)
    has_view = scan.in_view is not None
    return VoxelScan(
        key=scan.key,
        coords=vox.coords,
        features=scan.points[vox.kept, 3:4].astype(np.float32),
        voxel_labels=labels[vox.kept],
        point_to_voxel=point_to_voxel,
        point_labels=labels,
        point_distance=horizontal_distance(scan.points),
        point_in_view=scan.in_view.copy() if has_view else np.zeros(len(labels), dtype=bool),
        has_view=has_view,
    )


@dataclass(frozen=True)
class Voxelizer:
    """`voxelize_scan` with fixed settings, augmenting when `augment` (picklable for DataLoader workers)."""

    voxel_size: float
    point_range: list[float]
    ft: FinetuneConfig
    augment: bool

    def __call__(self, scan: LabelledScan, rng: np.random.Generator) -> VoxelScan:
        if self.augment:
            return voxelize_scan(scan, self.voxel_size, self.point_range, self.ft, rng)
        return voxelize_scan(scan, self.voxel_size, self.point_range)


def collate_scans(items: list[VoxelScan | None], voxel_size: float, point_range: list[float]) -> SegBatch:
    """Stack the usable scans of `items` into a SegBatch; `bad` counts the `None`s."""
    scans = [s for s in items if s is not None]
    nx, ny, nz = grid_shape(point_range, voxel_size)
    coords, p2v = [], []
    offset = 0
    for b, s in enumerate(scans):
        c = s.coords  # (V_b, 3) ix, iy, iz
        coords.append(np.stack([np.full(len(c), b), c[:, 2], c[:, 1], c[:, 0]], 1).astype(np.int32))
        p2v.append(np.where(s.point_to_voxel >= 0, s.point_to_voxel + offset, -1))
        offset += len(c)

    def cat(arrays: list[np.ndarray], dtype: type, width: int | None = None) -> torch.Tensor:
        if not arrays:
            return torch.zeros((0,) if width is None else (0, width), dtype=dtype)
        return torch.from_numpy(np.concatenate(arrays, 0)).to(dtype)

    return SegBatch(
        voxel_coords=cat(coords, torch.int32, 4),
        voxel_features=cat([s.features for s in scans], torch.float32, 1),
        voxel_labels=cat([s.voxel_labels for s in scans], torch.int64),
        point_to_voxel=cat(p2v, torch.int64),
        point_labels=cat([s.point_labels for s in scans], torch.int64),
        point_scan=cat([np.full(len(s.point_labels), b) for b, s in enumerate(scans)], torch.int64),
        point_distance=cat([s.point_distance for s in scans], torch.float32),
        point_in_view=cat([s.point_in_view for s in scans], torch.bool),
        scan_has_view=torch.tensor([s.has_view for s in scans], dtype=torch.bool),
        spatial_shape=[nz, ny, nx],
        batch_size=len(scans),
        keys=[s.key for s in scans],
        bad=len(items) - len(scans),
    )
