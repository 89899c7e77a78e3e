"""Read plans: everything needed to read one sample, resolved once by the driver, read anywhere.

A source (`NuScenesSource.plan(key)`, `SemanticKITTISource.plan(key)`, `Argoverse2Source.plan(key)`)
turns a sample key into a small picklable `ReadPlan`: absolute file paths, the point file's format
(flat float32 records, or an Argoverse 2 Feather sweep), every 4x4 transform, K, the image sizes
the metadata promises, the label file with its lookup table, timestamps, camera names and the
meta dictionary. `read_plan(plan)` then reads the files through the same readers as the sources
(`files.py`), so every kind of file damage still becomes a `SampleReadError`, and returns the
`Sample` that `source.read(key)` returns. Sharding sends plans, not sources, to its Ray tasks:
a worker never imports nuscenes-devkit nor loads its tables.

Damage found while planning (a missing table record, a malformed calibration entry) is kept in
the plan as `error` and raised by `read_plan`, so the sample is quarantined by the task like any
other bad sample. With several problems in one sample the first one reported may differ from
`source.read`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hvdistill.data.errors import SampleReadError
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.data.sources.feather import read_sweep
from hvdistill.data.sources.files import read_image, read_point_labels, read_points
from hvdistill.data.sources.labels import UNKNOWN_IDS_SHOWN, map_labels

FLOAT32_POINTS = "float32"  # flat float32 records of `point_columns` (nuScenes .pcd.bin, KITTI .bin)
FEATHER_SWEEP = "av2-feather"  # an Argoverse 2 LiDAR sweep (feather.read_sweep)
POINT_FORMATS = (FLOAT32_POINTS, FEATHER_SWEEP)


@dataclass(frozen=True, eq=False)
class CameraPlan:
    """One camera of a sample: its image file and calibration."""

    name: str
    image: str  # absolute path of the image file
    size: tuple[int, int] | None  # (width, height) the metadata promises; None = unchecked
    intrinsics: np.ndarray  # (3, 3) float64
    cam_to_ego: np.ndarray  # (4, 4) float64
    ego_to_global: np.ndarray  # (4, 4) float64, ego pose at the camera timestamp
    timestamp: int  # microseconds
    token: str


@dataclass(frozen=True, eq=False)
class LabelPlan:
    """A per-point label file and how its raw values map to training classes."""

    path: str
    dtype: str  # numpy dtype name of one raw label ("uint8", "uint32")
    mask: int  # raw & mask before the lookup (SemanticKITTI: lower 16 bits)
    lookup: np.ndarray  # (R,) uint8 raw -> class, UNMAPPED where undefined; shared by a source
    unknown: str  # reason when raw values are not in the lookup; "{ids}" = the first ones


@dataclass(frozen=True, eq=False)
class ReadPlan:
    """Everything `read_plan` needs for one sample; small, picklable, no devkit objects."""

    key: str
    dataset: str
    chunk: str  # scene / sequence the sample belongs to
    points: str = ""  # absolute path of the point file
    point_columns: int = 4  # float32 columns per point in that file (FLOAT32_POINTS)
    point_format: str = FLOAT32_POINTS  # one of POINT_FORMATS
    lidar_to_ego: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4) float64
    # (4, 4) float64 frame of the point file -> LiDAR frame (Argoverse 2 stores ego-frame points);
    # None = the file is in the LiDAR frame already
    file_to_lidar: np.ndarray | None = None
    ego_to_global: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4) float64
    timestamp: int = 0  # microseconds, LiDAR
    cameras: tuple[CameraPlan, ...] = ()
    labels: LabelPlan | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (path, reason) of damage found while planning


def failed_plan(key: str, dataset: str, chunk: str, err: SampleReadError) -> ReadPlan:
    """A plan that raises `err` when read (damage found while planning)."""
    return ReadPlan(key=key, dataset=dataset, chunk=chunk, error=(err.path, err.reason))


def _read_labels(key: str, plan: LabelPlan, n_points: int) -> np.ndarray:
    raw = read_point_labels(key, Path(plan.path), np.dtype(plan.dtype), n_points)  # (N,)
    if plan.mask:
        raw = raw & plan.mask
    labels, bad = map_labels(raw, plan.lookup)  # (N,) uint8
    if len(bad):
        raise SampleReadError(key, plan.path, plan.unknown.format(ids=bad.tolist()[:UNKNOWN_IDS_SHOWN]))
    return labels


def _read_points(plan: ReadPlan) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of the plan's point file, in its format."""
    if plan.point_format == FEATHER_SWEEP:
        points = read_sweep(plan.key, Path(plan.points))  # (N, 4)
    elif plan.point_format == FLOAT32_POINTS:
        points = read_points(plan.key, Path(plan.points), plan.point_columns)  # (N, 4)
    else:
        raise ValueError(
            f"read plan of {plan.key}: unknown point format {plan.point_format!r}; use {POINT_FORMATS}"
        )
    if plan.file_to_lidar is not None:
        xyz = points[:, :3].astype(np.float64) @ plan.file_to_lidar[:3, :3].T + plan.file_to_lidar[:3, 3]
        points[:, :3] = xyz.astype(np.float32)  # (N, 3) in the LiDAR frame
    return points


def read_plan(plan: ReadPlan) -> Sample:
    """The full-resolution sample of `plan` (what `source.read(plan.key)` returns).

    Raises SampleReadError naming the key and the damaged file."""
    key = plan.key
    if plan.error is not None:
        raise SampleReadError(key, *plan.error)
    points = _read_points(plan)  # (N, 4)
    cameras = [
        CameraFrame(
            name=c.name,
            image=read_image(key, Path(c.image), c.size),  # (H, W, 3)
            intrinsics=c.intrinsics.copy(),
            cam_to_ego=c.cam_to_ego.copy(),
            ego_to_global=c.ego_to_global.copy(),
            timestamp=c.timestamp,
            token=c.token,
        )
        for c in plan.cameras
    ]
    labels = None if plan.labels is None else _read_labels(key, plan.labels, len(points))
    return Sample(
        key=key,
        dataset=plan.dataset,
        points=points,
        lidar_to_ego=plan.lidar_to_ego.copy(),
        ego_to_global=plan.ego_to_global.copy(),
        cameras=cameras,
        labels=labels,
        timestamp=plan.timestamp,
        meta=dict(plan.meta),
    )
