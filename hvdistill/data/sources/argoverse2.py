"""Argoverse 2 sensor-dataset reader: LiDAR sweeps and the ring cameras nearest in time, no devkit.

Layout (the devkit's): `<root>/<split>/<log id>/` with `sensors/lidar/<t_ns>.feather`,
`sensors/cameras/<ring camera>/<t_ns>.jpg`, `calibration/egovehicle_SE3_sensor.feather`,
`calibration/intrinsics.feather` and `city_SE3_egovehicle.feather`; splits train / val / test.
Chunks are the logs of the configured split (or the log ids of a split file, found in any split
folder), keys "<log id>_<LiDAR t_ns>" (a WebDataset key: no dots), in time order. Every Feather
table is read with pyarrow and checked (columns, types, nulls, finite values) before use
(feather.py); the `av2` devkit is never imported (it is the tests' reference only).

One sample = one sweep and, for each ring camera, its image nearest in time (ties: the earlier,
as the devkit's `get_closest_img_fpath`); an image farther than `camera_tolerance_ms` (default
the devkit's 25 ms) is a missing camera frame: the sample is damaged. In `Sample` terms: AV2
points are stored in the ego frame at the sweep time; the sample's LiDAR frame has the ego
frame's axes and, with `lidar_origin=sensor` (the default), its origin at the up_lidar's
mounting point (lidar_to_ego = that translation, the stored points shifted by it), so the ground
lies below the origin as in nuScenes' and KITTI's LiDAR frames and one voxel crop fits the three
rigs; `lidar_origin=ego` keeps the stored frame (lidar_to_ego = I). ego_to_global = the city
pose at the sweep timestamp; each camera has cam_to_ego from egovehicle_SE3_sensor and
ego_to_global = the pose at the IMAGE's timestamp, so `Sample.lidar_to_camera` is the devkit's
motion-compensated projection (`project_ego_to_img_motion_compensated`). Poses are looked up by
exact timestamp, as the devkit does. Points: (N, 4) float32 x, y, z, intensity with the
intensity on AV2's (and nuScenes') 0-255 scale, as stored (SemanticKITTI's remission is 0-1).
No per-point labels: the sensor dataset has none (label_map_name ""). Timestamps in `Sample`
are microseconds (t_ns // 1000); the exact nanoseconds are in the meta dictionary.

Damage of one file quarantines the samples that need it: a missing/corrupt sweep or image that
sample; a damaged log-level table (poses, calibration) every sample of the log (its parse
result, or its damage, is cached per log on the driver); a pose missing or non-finite at a
timestamp, or a camera absent from a calibration table, the samples that need that row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hvdistill.config.data import ARGOVERSE2_CAMERA_TOLERANCE_MS, ARGOVERSE2_RING_CAMERAS
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.sample import Sample
from hvdistill.data.sources.feather import FLOAT, INT, STRING, read_columns
from hvdistill.data.sources.files import check_cameras, read_split_file
from hvdistill.data.sources.plan import FEATHER_SWEEP, CameraPlan, ReadPlan, failed_plan, read_plan
from hvdistill.geometry.transforms import make_transform

SPLITS = ("train", "val", "test")
POSE_COLUMNS = ("qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m")
INTRINSIC_COLUMNS = {
    "fx_px": FLOAT,
    "fy_px": FLOAT,
    "cx_px": FLOAT,
    "cy_px": FLOAT,
    "width_px": INT,
    "height_px": INT,
}
POSES_FILE = "city_SE3_egovehicle.feather"
EXTRINSICS_FILE = "calibration/egovehicle_SE3_sensor.feather"
INTRINSICS_FILE = "calibration/intrinsics.feather"
NS_PER_MS, NS_PER_US = 1_000_000, 1_000
LIDAR_ORIGINS = ("sensor", "ego")  # data.sources[*].lidar_origin
ORIGIN_SENSOR = "up_lidar"  # lidar_origin=sensor: the LiDAR frame's origin is this unit's mounting point


def find_logs(root: Path) -> dict[str, Path]:
    """{log id: folder} of every `<root>/<split>/<log>/sensors/lidar` (splits train, val, test)."""
    logs: dict[str, Path] = {}
    for split in SPLITS:
        folder = root / split
        for log in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (log / "sensors" / "lidar").is_dir():
                if log.name in logs:
                    raise DatasetLayoutError(
                        f"Argoverse 2: log {log.name} is in both {logs[log.name]} and {log}"
                    )
                logs[log.name] = log
    if not logs:
        raise DatasetLayoutError(
            f"Argoverse 2: no <split>/<log id>/sensors/lidar under {root} (splits {list(SPLITS)}); "
            f"pass the sensor dataset's folder that holds train/, val/ and test/"
        )
    return logs


def rigid(key: str, path: Path, params: np.ndarray, what: str) -> np.ndarray:
    """(4, 4) float64 of qw qx qy qz tx ty tz; non-finite values or a zero quaternion are damage."""
    if not np.isfinite(params).all() or np.linalg.norm(params[:4]) < 1e-12:
        raise SampleReadError(
            key, path, f"{what}: rotation/translation {params.tolist()} is not a rigid transform"
        )
    return make_transform(params[:4], params[4:])


def read_sensor_rows(key: str, path: Path, columns: dict[str, str], what: str) -> dict[str, np.ndarray]:
    """{sensor_name: (len(columns),) float64 row} of a calibration table; a repeated name is damage."""
    cols = read_columns(key, path, {"sensor_name": STRING, **columns}, what)
    names = list(cols["sensor_name"])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SampleReadError(key, path, f"{what}: sensors {repeated} have more than one row")
    values = np.stack([cols[c].astype(np.float64) for c in columns], axis=1)  # (S, len(columns))
    return {name: values[i] for i, name in enumerate(names)}


def read_poses(key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """((T,) int64 sorted timestamps, (T, 7) float64 qw .. tz_m) of city_SE3_egovehicle."""
    cols = read_columns(key, path, {"timestamp_ns": INT, **dict.fromkeys(POSE_COLUMNS, FLOAT)}, "ego poses")
    times = cols["timestamp_ns"].astype(np.int64)  # (T,)
    params = np.stack([cols[c].astype(np.float64) for c in POSE_COLUMNS], axis=1)  # (T, 7)
    order = np.argsort(times, kind="stable")
    times, params = times[order], params[order]
    repeated = np.unique(times[1:][times[1:] == times[:-1]])
    if len(repeated):
        raise SampleReadError(
            key, path, f"ego poses: timestamps {repeated[:3].tolist()} have more than one row"
        )
    return times, params


def image_times(folder: Path) -> np.ndarray:
    """(M,) int64 sorted timestamps of the `<t_ns>.jpg` files of a camera folder (none if absent)."""
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        names = []
    stamps = [int(n[:-4]) for n in names if n.endswith(".jpg") and n[:-4].isdigit()]
    return np.sort(np.asarray(stamps, dtype=np.int64))


@dataclass
class LogIndex:
    """What planning needs of one log, parsed once on the driver."""

    folder: Path
    pose_times: np.ndarray  # (T,) int64 sorted
    pose_params: np.ndarray  # (T, 7) float64 qw qx qy qz tx ty tz (ego -> city)
    extrinsics: dict[str, np.ndarray]  # sensor -> (7,) float64 (sensor -> ego)
    intrinsics: dict[str, np.ndarray]  # camera -> (6,) float64 fx fy cx cy width height
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (M,) int64 sorted

    def pose(self, key: str, stamp: int) -> np.ndarray:
        """(4, 4) ego -> city at exactly `stamp` (ns)."""
        path = self.folder / POSES_FILE
        i = int(np.searchsorted(self.pose_times, stamp))
        if i == len(self.pose_times) or self.pose_times[i] != stamp:
            raise SampleReadError(
                key, path, f"no ego pose at timestamp {stamp} (poses are looked up exactly)"
            )
        return rigid(key, path, self.pose_params[i], f"ego pose at {stamp}")


def nearest(times: np.ndarray, stamp: int) -> int | None:
    """The element of sorted `times` nearest to `stamp` (the earlier on a tie); None if empty."""
    if not len(times):
        return None
    i = int(np.searchsorted(times, stamp))
    candidates = [int(t) for t in times[max(i - 1, 0) : i + 1]]
    return min(candidates, key=lambda t: (abs(t - stamp), t))


class Argoverse2Source:
    """`DataSource` over an Argoverse 2 sensor-dataset root (the folder holding train/ val/ test/)."""

    name = "argoverse2"
    version = "av2-sensor"
    label_map_name = ""  # no per-point labels

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_file: str = "",
        cameras: list[str] | None = None,
        camera_tolerance_ms: float = ARGOVERSE2_CAMERA_TOLERANCE_MS,
        lidar_origin: str = "sensor",
    ):
        if lidar_origin not in LIDAR_ORIGINS:
            raise ValueError(f"lidar_origin {lidar_origin!r} is not one of {LIDAR_ORIGINS}")
        self.lidar_origin = lidar_origin
        self.root = Path(root)
        self.split = split
        names = list(cameras or ARGOVERSE2_RING_CAMERAS)
        self.camera_names = check_cameras("Argoverse 2", names, ARGOVERSE2_RING_CAMERAS)
        self.tolerance_ns = int(round(camera_tolerance_ms * NS_PER_MS))
        self._logs = find_logs(self.root)
        self._index: dict[str, LogIndex | tuple[str, str]] = {}  # log id -> index, or (path, reason)
        if split_file:
            wanted = read_split_file(split_file)
            missing = [n for n in wanted if n not in self._logs]
            if missing:
                raise DatasetLayoutError(
                    f"split file {split_file} names logs that {self.root} lacks: {missing}"
                )
            self._chunks = wanted
        elif split in SPLITS:
            self._chunks = [log for log, folder in self._logs.items() if folder.parent.name == split]
        else:
            raise DatasetLayoutError(f"Argoverse 2 split '{split}': use train|val|test or a split file")

    # ---------------------------------------------------------------- DataSource protocol

    def chunks(self) -> list[str]:
        """Log ids of the split (sorted), or of the split file (in its order)."""
        return list(self._chunks)

    def keys(self, chunk: str) -> list[str]:
        """ "<log id>_<t_ns>" of every sweep of log `chunk`, in time order."""
        if chunk not in self._logs:
            raise KeyError(f"Argoverse 2 has no log '{chunk}' under {self.root}")
        lidar = self._logs[chunk] / "sensors" / "lidar"
        stamps = sorted(int(p.stem) for p in lidar.glob("*.feather") if p.stem.isdigit())
        return [f"{chunk}_{t}" for t in stamps]

    def read(self, key: str) -> Sample:
        """The sample of `key` (its plan, read here); raises SampleReadError naming the damaged file."""
        return read_plan(self.plan(key))

    def plan(self, key: str) -> ReadPlan:
        """The read plan of "<log id>_<t_ns>"; damage found while planning is its `error`."""
        log, _, stamp = key.rpartition("_")
        try:
            return self._plan(key, log, stamp)
        except SampleReadError as err:
            return failed_plan(key, self.name, log, err)

    # ---------------------------------------------------------------- planning

    def _plan(self, key: str, log: str, stamp_text: str) -> ReadPlan:
        if not log or not stamp_text.isdigit() or log not in self._logs:
            raise SampleReadError(
                key, self.root, "key is not '<log id>_<LiDAR timestamp ns>' of a log of this root"
            )
        stamp = int(stamp_text)
        index = self._log_index(key, log)
        cameras = tuple(self._camera_plan(key, log, index, name, stamp) for name in self.camera_names)
        lidar_to_ego = self._lidar_frame(key, index)  # (4, 4) ego axes, origin per lidar_origin
        return ReadPlan(
            key=key,
            dataset=self.name,
            chunk=log,
            points=str(index.folder / "sensors" / "lidar" / f"{stamp}.feather"),
            point_format=FEATHER_SWEEP,
            lidar_to_ego=lidar_to_ego,
            file_to_lidar=None if self.lidar_origin == "ego" else np.linalg.inv(lidar_to_ego),
            ego_to_global=index.pose(key, stamp),
            timestamp=stamp // NS_PER_US,
            cameras=cameras,
            labels=None,
            meta={
                "scene": log,
                "split": index.folder.parent.name,
                "timestamp_ns": stamp,
                "camera_timestamps_ns": [int(Path(c.image).stem) for c in cameras],
                "label_map": self.label_map_name,
                "version": self.version,
            },
        )

    def _lidar_frame(self, key: str, index: LogIndex) -> np.ndarray:
        """(4, 4) float64 LiDAR frame -> ego: identity for lidar_origin=ego; for sensor, a shift to
        the up_lidar's mounting point (its translation only: the axes stay the ego frame's)."""
        frame = np.eye(4)
        if self.lidar_origin == "ego":
            return frame
        if ORIGIN_SENSOR not in index.extrinsics:
            raise SampleReadError(
                key,
                index.folder / EXTRINSICS_FILE,
                f"no row for {ORIGIN_SENSOR}, the origin of the LiDAR frame "
                f"(data.sources[*].lidar_origin=ego keeps AV2's ego frame instead)",
            )
        mount = rigid(key, index.folder / EXTRINSICS_FILE, index.extrinsics[ORIGIN_SENSOR], ORIGIN_SENSOR)
        frame[:3, 3] = mount[:3, 3]
        return frame

    def _camera_plan(self, key: str, log: str, index: LogIndex, name: str, stamp: int) -> CameraPlan:
        folder = index.folder / "sensors" / "cameras" / name
        image = nearest(index.images[name], stamp)
        if image is None:
            raise SampleReadError(key, folder, f"no {name} images: a missing camera frame")
        if abs(image - stamp) > self.tolerance_ns:
            raise SampleReadError(
                key,
                folder,
                f"no {name} image within {self.tolerance_ns / NS_PER_MS:g} ms of the sweep (the nearest, "
                f"{image}, is {abs(image - stamp) / NS_PER_MS:.1f} ms away): a missing camera frame",
            )
        for table, rows in ((INTRINSICS_FILE, index.intrinsics), (EXTRINSICS_FILE, index.extrinsics)):
            if name not in rows:
                raise SampleReadError(key, index.folder / table, f"no row for camera {name}")
        fx, fy, cx, cy, width, height = index.intrinsics[name]
        if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0 and width >= 1 and height >= 1):
            raise SampleReadError(
                key,
                index.folder / INTRINSICS_FILE,
                f"{name}: intrinsics {index.intrinsics[name].tolist()} are invalid",
            )
        return CameraPlan(
            name=name,
            image=str(folder / f"{image}.jpg"),
            size=(int(width), int(height)),
            intrinsics=np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]),
            cam_to_ego=rigid(
                key, index.folder / EXTRINSICS_FILE, index.extrinsics[name], f"{name} extrinsics"
            ),
            ego_to_global=index.pose(key, image),
            timestamp=image // NS_PER_US,
            token=f"{log}/{name}/{image}",
        )

    def _log_index(self, key: str, log: str) -> LogIndex:
        """The log's parsed tables (cached); a damaged table raises for every sample of the log."""
        if log not in self._index:
            folder = self._logs[log]
            try:
                times, params = read_poses(key, folder / POSES_FILE)
                extrinsics = read_sensor_rows(
                    key, folder / EXTRINSICS_FILE, dict.fromkeys(POSE_COLUMNS, FLOAT), "sensor extrinsics"
                )
                intrinsics = read_sensor_rows(key, folder / INTRINSICS_FILE, INTRINSIC_COLUMNS, "intrinsics")
                images = {c: image_times(folder / "sensors" / "cameras" / c) for c in self.camera_names}
                self._index[log] = LogIndex(folder, times, params, extrinsics, intrinsics, images)
            except SampleReadError as err:
                self._index[log] = (err.path, err.reason)
        entry = self._index[log]
        if isinstance(entry, tuple):
            raise SampleReadError(key, *entry)
        return entry
