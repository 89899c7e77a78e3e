"""nuScenes reader built on nuscenes-devkit: keyframe samples as typed `Sample`s.

Every lookup goes through the devkit's tables (`nusc.get('sample', token)` ...). One sample is
the LIDAR_TOP keyframe sweep (x, y, z, intensity of the 5-column .pcd.bin), the six camera
images in `NUSCENES_CAMERAS` order, the calibrated_sensor and ego_pose records at the LiDAR's
and at each camera's timestamp (as float64 4x4 matrices), and, when nuScenes-lidarseg is
installed in the root, the per-point labels mapped 32 -> 16 classes by the devkit's
`LidarsegClassMapper`. Chunks are scenes of the official split (mini_train / mini_val for
v1.0-mini) or of a split file; keys are sample tokens. `plan(key)` resolves the same table
lookups into a devkit-free `ReadPlan` (plan.py) for workers that must not load the tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hvdistill.config import NUSCENES_CAMERAS
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.data.sources.files import (
    check_cameras,
    read_image,
    read_point_labels,
    read_points,
    read_split_file,
)
from hvdistill.data.sources.labels import (
    NUSCENES_LABEL_MAP,
    NUSCENES_UNKNOWN,
    UNKNOWN_IDS_SHOWN,
    map_labels,
    nuscenes_lookup,
)
from hvdistill.data.sources.plan import CameraPlan, LabelPlan, ReadPlan, failed_plan
from hvdistill.geometry.transforms import make_transform

LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_COLUMNS = 5  # x, y, z, intensity, ring index (float32)


def official_split_name(version: str, split: str) -> str:
    """The devkit split name: mini_train / mini_val for v1.0-mini, train / val otherwise."""
    return f"mini_{split}" if version.endswith("mini") else split


def load_nuscenes(root: str | Path, version: str) -> Any:
    """A devkit `NuScenes` for `root`/`version`; layout problems become a DatasetLayoutError."""
    from nuscenes import NuScenes

    table_root = Path(root) / version
    if not table_root.is_dir():
        found = sorted(p.name for p in Path(root).glob("v1.0-*") if p.is_dir())
        raise DatasetLayoutError(
            f"nuScenes: no table folder {table_root}; versions found in {root}: {found or 'none'}"
            " (pass --version / data.sources[*].version)"
        )
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise DatasetLayoutError(
            f"nuScenes tables in {table_root} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None


class NuScenesSource:
    """`DataSource` over a nuScenes root (tables + samples/ + optional lidarseg/)."""

    name = "nuscenes"

    def __init__(
        self,
        root: str | Path,
        version: str,
        split: str = "train",
        split_file: str = "",
        cameras: list[str] | None = None,
    ):
        self.root = Path(root)
        self.version = version
        self.split = split
        self.camera_names = check_cameras("nuScenes", list(cameras or NUSCENES_CAMERAS), NUSCENES_CAMERAS)
        self.nusc = load_nuscenes(self.root, version)
        self.has_labels = hasattr(self.nusc, "lidarseg") and len(self.nusc.lidarseg) > 0
        self.label_map_name = NUSCENES_LABEL_MAP if self.has_labels else ""
        self._lookup = self._build_lookup() if self.has_labels else None
        self._scenes = {s["name"]: s for s in self.nusc.scene}
        self._key_chunk: dict[str, str] = {}  # sample token -> scene name, filled by keys()
        self._chunks = self._select_scenes(split, split_file)

    def _build_lookup(self) -> np.ndarray:
        try:
            return nuscenes_lookup(self.nusc)
        except (KeyError, AssertionError) as exc:
            raise DatasetLayoutError(
                f"nuScenes category table in {self.root / self.version} does "
                f"not match the lidarseg class mapping: {exc}"
            ) from None

    def _select_scenes(self, split: str, split_file: str) -> list[str]:
        if split_file:
            wanted = read_split_file(split_file)
            missing = [n for n in wanted if n not in self._scenes]
            if missing:
                raise DatasetLayoutError(
                    f"split file {split_file} names scenes that {self.root}/{self.version} lacks: {missing}"
                )
            return wanted
        from nuscenes.utils.splits import create_splits_scenes

        split_name = official_split_name(self.version, split)
        official = create_splits_scenes().get(split_name)
        if official is None:
            raise DatasetLayoutError(
                f"nuScenes has no official split '{split_name}'; use split=train|val or a split file"
            )
        return [n for n in official if n in self._scenes]

    # ---------------------------------------------------------------- DataSource protocol

    def chunks(self) -> list[str]:
        """Scene names of the split that this root holds, in the split's order."""
        return list(self._chunks)

    def keys(self, chunk: str) -> list[str]:
        """Sample tokens of scene `chunk` in temporal order (following `next`)."""
        if chunk not in self._scenes:
            raise KeyError(f"nuScenes {self.version} has no scene '{chunk}'")
        tokens, token = [], self._scenes[chunk]["first_sample_token"]
        while token:
            tokens.append(token)
            token = self.nusc.get("sample", token)["next"]
        self._key_chunk.update(dict.fromkeys(tokens, chunk))
        return tokens

    def read(self, key: str) -> Sample:
        """The sample with token `key`; raises SampleReadError naming the damaged file."""
        sample = self._table_get(key, "sample", key)
        data = sample["data"]
        if LIDAR_CHANNEL not in data:
            raise SampleReadError(key, self._table_path("sample"), f"sample has no {LIDAR_CHANNEL}")
        lidar_sd = self._table_get(key, "sample_data", data[LIDAR_CHANNEL])
        points = read_points(key, self.root / lidar_sd["filename"], LIDAR_COLUMNS)  # (N, 4)
        lidar_to_ego, ego_to_global = self._sensor_frames(key, lidar_sd)
        cameras = [self._read_camera(key, data, name) for name in self.camera_names]
        scene = self._table_get(key, "scene", sample["scene_token"])["name"]
        return Sample(
            key=key,
            dataset=self.name,
            points=points,
            lidar_to_ego=lidar_to_ego,
            ego_to_global=ego_to_global,
            cameras=cameras,
            labels=self._read_labels(key, lidar_sd["token"], len(points)),
            timestamp=int(lidar_sd["timestamp"]),
            meta={
                "scene": scene,
                "lidar_token": lidar_sd["token"],
                "camera_tokens": [c.token for c in cameras],
                "label_map": self.label_map_name,
                "version": self.version,
            },
        )

    def plan(self, key: str) -> ReadPlan:
        """The devkit-free read plan of sample `key`; damage in the tables becomes its `error`."""
        try:
            return self._plan(key)
        except SampleReadError as err:
            return failed_plan(key, self.name, self._key_chunk.get(key, ""), err)

    def _plan(self, key: str) -> ReadPlan:
        sample = self._table_get(key, "sample", key)
        data = sample["data"]
        if LIDAR_CHANNEL not in data:
            raise SampleReadError(key, self._table_path("sample"), f"sample has no {LIDAR_CHANNEL}")
        lidar_sd = self._table_get(key, "sample_data", data[LIDAR_CHANNEL])
        lidar_to_ego, ego_to_global = self._sensor_frames(key, lidar_sd)
        cameras = tuple(self._camera_plan(key, data, name) for name in self.camera_names)
        scene = self._table_get(key, "scene", sample["scene_token"])["name"]
        labels = None
        if self.has_labels:
            record = self._table_get(key, "lidarseg", lidar_sd["token"])
            labels = LabelPlan(
                str(self.root / record["filename"]), "uint8", 0, self._lookup, NUSCENES_UNKNOWN
            )
        return ReadPlan(
            key=key,
            dataset=self.name,
            chunk=scene,
            points=str(self.root / lidar_sd["filename"]),
            point_columns=LIDAR_COLUMNS,
            lidar_to_ego=lidar_to_ego,
            ego_to_global=ego_to_global,
            timestamp=int(lidar_sd["timestamp"]),
            cameras=cameras,
            labels=labels,
            meta={
                "scene": scene,
                "lidar_token": lidar_sd["token"],
                "camera_tokens": [c.token for c in cameras],
                "label_map": self.label_map_name,
                "version": self.version,
            },
        )

    # ---------------------------------------------------------------- pieces of a sample

    def _read_camera(self, key: str, data: dict, name: str) -> CameraFrame:
        c = self._camera_plan(key, data, name)
        image = read_image(key, Path(c.image), c.size)  # (H, W, 3)
        return CameraFrame(
            name=name,
            image=image,
            intrinsics=c.intrinsics,
            cam_to_ego=c.cam_to_ego,
            ego_to_global=c.ego_to_global,
            timestamp=c.timestamp,
            token=c.token,
        )

    def _camera_plan(self, key: str, data: dict, name: str) -> CameraPlan:
        """Camera `name` of sample `data` from the tables: image path, size, K, poses."""
        if name not in data:
            raise SampleReadError(key, self._table_path("sample_data"), f"sample has no {name} image")
        sd = self._table_get(key, "sample_data", data[name])
        cam_to_ego, ego_to_global = self._sensor_frames(key, sd)
        cs = self._table_get(key, "calibrated_sensor", sd["calibrated_sensor_token"])
        intrinsics = np.asarray(cs.get("camera_intrinsic") or [], dtype=np.float64)
        if intrinsics.shape != (3, 3) or not np.isfinite(intrinsics).all() or intrinsics[2, 2] == 0:
            raise SampleReadError(
                key,
                self._table_path("calibrated_sensor"),
                f"{name} calibrated_sensor {cs['token']}: camera_intrinsic is not "
                f"a finite 3x3 matrix: {cs.get('camera_intrinsic')}",
            )
        size = (int(sd["width"]), int(sd["height"])) if sd.get("width") else None
        return CameraPlan(
            name=name,
            image=str(self.root / sd["filename"]),
            size=size,
            intrinsics=intrinsics,
            cam_to_ego=cam_to_ego,
            ego_to_global=ego_to_global,
            timestamp=int(sd["timestamp"]),
            token=sd["token"],
        )

    def _sensor_frames(self, key: str, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(sensor -> ego, ego -> global) float64 4x4 at the timestamp of sample_data `sd`."""
        cs = self._table_get(key, "calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self._table_get(key, "ego_pose", sd["ego_pose_token"])
        return self._rigid(key, "calibrated_sensor", cs), self._rigid(key, "ego_pose", pose)

    def _rigid(self, key: str, table: str, record: dict) -> np.ndarray:
        rotation = np.asarray(record.get("rotation", []), dtype=np.float64)
        translation = np.asarray(record.get("translation", []), dtype=np.float64)
        ok = rotation.shape == (4,) and translation.shape == (3,)
        ok = ok and bool(np.isfinite(rotation).all() and np.isfinite(translation).all())
        if not ok or np.linalg.norm(rotation) < 1e-12:
            raise SampleReadError(
                key,
                self._table_path(table),
                f"{table} {record.get('token')}: malformed rotation/translation "
                f"{record.get('rotation')} / {record.get('translation')}",
            )
        return make_transform(rotation, translation)

    def _read_labels(self, key: str, lidar_token: str, n_points: int) -> np.ndarray | None:
        if not self.has_labels:
            return None
        record = self._table_get(key, "lidarseg", lidar_token)
        path = self.root / record["filename"]
        raw = read_point_labels(key, path, np.uint8, n_points)  # (N,) fine classes 0..31
        labels, bad = map_labels(raw, self._lookup)
        if len(bad):
            raise SampleReadError(key, path, NUSCENES_UNKNOWN.format(ids=bad.tolist()[:UNKNOWN_IDS_SHOWN]))
        return labels

    def _table_path(self, table: str) -> Path:
        return self.root / self.version / f"{table}.json"

    def _table_get(self, key: str, table: str, token: str) -> dict:
        try:
            return self.nusc.get(table, token)
        except KeyError:
            raise SampleReadError(
                key, self._table_path(table), f"no {table} record with token {token}"
            ) from None
