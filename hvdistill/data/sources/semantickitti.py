"""SemanticKITTI reader: velodyne scans, 19-class labels, the left colour camera and calib.txt.

Layout: `<root>/sequences/<SEQ>/{velodyne/*.bin, labels/*.label, image_2/*.png, calib.txt,
poses.txt, times.txt}` (`<root>` may also be the `dataset/` folder above it, or `sequences/`).
Chunks are sequences (train: 00-07, 09, 10; val: 08; or a split file), keys "SEQ_FRAME".

Calibration in `Sample` terms. The ego frame is the velodyne frame (lidar_to_ego = I). calib.txt
gives Tr (velodyne -> rectified camera 0) and P2 = [K | K t] (rectified camera 0 -> image 2,
with the baseline t folded into its 4th column). We store intrinsics = K and
cam_to_ego = inverse of (translate(t) @ Tr), so `K @ Sample.lidar_to_camera(0)` reproduces
`P2 @ Tr` exactly and the camera frame is camera 2's own (depth = z in that frame). Ego poses:
`poses.txt` (camera 0 -> world) composed with Tr when present, else identity; the LiDAR and the
camera share it, so it cancels in `lidar_to_camera`. `plan(key)` parses calib/poses/times into
a `ReadPlan` (plan.py) whose files any worker reads with `read_plan`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    SEMANTICKITTI_LABEL_MAP,
    SEMANTICKITTI_UNKNOWN,
    UNKNOWN_IDS_SHOWN,
    map_labels,
    semantickitti_lookup,
)
from hvdistill.data.sources.plan import CameraPlan, LabelPlan, ReadPlan, failed_plan

KITTI_CAMERAS = ("image_2", "image_3")  # left / right colour camera; P2 / P3 in calib.txt
DEFAULT_CAMERAS = ["image_2"]
TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
VAL_SEQUENCES = ("08",)
POINT_COLUMNS = 4  # x, y, z, remission (float32)
RAW_ID_MASK = 0xFFFF  # lower 16 bits of a .label entry: semantic id (upper: instance id)
MATRIX_VALUES = 12  # a 3x4 matrix in calib.txt / poses.txt, row-major


def find_sequences_dir(root: str | Path) -> Path:
    """The folder holding the sequence folders, from the dataset root or a folder above it."""
    root = Path(root)
    for candidate in (root / "sequences", root / "dataset" / "sequences", root):
        if candidate.is_dir() and any((p / "velodyne").is_dir() for p in candidate.iterdir()):
            return candidate
    raise DatasetLayoutError(
        f"SemanticKITTI: no sequences/<SEQ>/velodyne under {root}; pass the folder that contains sequences/"
    )


def parse_matrix(values: list[str]) -> np.ndarray | None:
    """(4, 4) float64 from 12 row-major numbers of a 3x4 matrix; None if malformed."""
    try:
        numbers = np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None
    if numbers.shape != (MATRIX_VALUES,) or not np.isfinite(numbers).all():
        return None
    matrix = np.eye(4)
    matrix[:3, :] = numbers.reshape(3, 4)
    return matrix


def read_calibration(key: str, path: Path) -> dict[str, np.ndarray]:
    """calib.txt entries ("P0:" .. "P3:", "Tr:") as (4, 4) float64; any malformed line raises."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SampleReadError(key, path, "calibration file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleReadError(key, path, f"cannot read calibration: {exc}") from None
    calib = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        matrix = parse_matrix(rest.split()) if sep else None
        if matrix is None:
            raise SampleReadError(key, path, f"line {number} is not 'NAME: 12 numbers': {line[:80]!r}")
        calib[name.strip()] = matrix
    return calib


def camera_calibration(
    key: str, path: Path, calib: dict[str, np.ndarray], camera: str
) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), camera -> velodyne (4, 4)) of `camera` such that K @ inv(cam_to_velo) = P @ Tr."""
    p_name = "P" + camera.rsplit("_", 1)[-1]
    for name in (p_name, "Tr"):
        if name not in calib:
            raise SampleReadError(key, path, f"calibration has no '{name}:' entry")
    projection, velo_to_cam0 = calib[p_name], calib["Tr"]
    k = projection[:3, :3]
    if abs(np.linalg.det(k)) < 1e-9:
        raise SampleReadError(key, path, f"{p_name} has a singular 3x3 part: {k.tolist()}")
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(k, projection[:3, 3])  # P[:, 3] = K @ t
    velo_to_cam = shift @ velo_to_cam0
    if abs(np.linalg.det(velo_to_cam[:3, :3])) < 1e-9:
        raise SampleReadError(key, path, "Tr has a singular rotation part")
    return k.copy(), np.linalg.inv(velo_to_cam)


class SemanticKITTISource:
    """`DataSource` over a SemanticKITTI root."""

    name = "semantickitti"
    version = "semantickitti"
    label_map_name = SEMANTICKITTI_LABEL_MAP

    def __init__(
        self, root: str | Path, split: str = "train", split_file: str = "", cameras: list[str] | None = None
    ):
        self.root = Path(root)
        self.split = split
        self.camera_names = check_cameras("SemanticKITTI", list(cameras or DEFAULT_CAMERAS), KITTI_CAMERAS)
        self.sequences_dir = find_sequences_dir(self.root)
        self._lookup = semantickitti_lookup()
        self._poses: dict[str, np.ndarray] = {}
        self._times: dict[str, list[float]] = {}
        present = sorted(p.name for p in self.sequences_dir.iterdir() if (p / "velodyne").is_dir())
        if split_file:
            wanted = [n.zfill(2) for n in read_split_file(split_file)]
            missing = [n for n in wanted if n not in present]
            if missing:
                raise DatasetLayoutError(
                    f"split file {split_file} names sequences that {self.sequences_dir} lacks: {missing}"
                )
            self._chunks = wanted
        else:
            if split not in ("train", "val"):
                raise DatasetLayoutError(f"SemanticKITTI split '{split}': use train|val or a split file")
            official = TRAIN_SEQUENCES if split == "train" else VAL_SEQUENCES
            self._chunks = [s for s in official if s in present]

    # ---------------------------------------------------------------- DataSource protocol

    def chunks(self) -> list[str]:
        """Sequence names of the split that this root holds."""
        return list(self._chunks)

    def keys(self, chunk: str) -> list[str]:
        """ "SEQ_FRAME" keys of sequence `chunk`, in frame order."""
        velodyne = self.sequences_dir / chunk / "velodyne"
        if not velodyne.is_dir():
            raise KeyError(f"SemanticKITTI has no sequence '{chunk}' in {self.sequences_dir}")
        return [f"{chunk}_{p.stem}" for p in sorted(velodyne.glob("*.bin"))]

    def read(self, key: str) -> Sample:
        """The sample "SEQ_FRAME"; raises SampleReadError naming the damaged file."""
        seq, _, frame = key.rpartition("_")
        seq_dir = self.sequences_dir / seq
        if not seq or not frame.isdigit():
            raise SampleReadError(key, self.sequences_dir, "key is not 'SEQ_FRAME', e.g. '08_000123'")
        points = read_points(key, seq_dir / "velodyne" / f"{frame}.bin", POINT_COLUMNS)  # (N, 4)
        calib_path = seq_dir / "calib.txt"
        calib = read_calibration(key, calib_path)
        ego_to_global = self._ego_pose(key, seq_dir, int(frame), calib)
        cameras = []
        for camera in self.camera_names:
            k, cam_to_ego = camera_calibration(key, calib_path, calib, camera)
            image = read_image(key, seq_dir / camera / f"{frame}.png")  # (H, W, 3)
            cameras.append(
                CameraFrame(
                    name=camera,
                    image=image,
                    intrinsics=k,
                    cam_to_ego=cam_to_ego,
                    ego_to_global=ego_to_global,
                    token=f"{key}/{camera}",
                )
            )
        labels = self._read_labels(key, seq_dir, frame, len(points))
        timestamp = self._timestamp(seq_dir, int(frame))
        for cam in cameras:
            cam.timestamp = timestamp
        return Sample(
            key=key,
            dataset=self.name,
            points=points,
            lidar_to_ego=np.eye(4),
            ego_to_global=ego_to_global,
            cameras=cameras,
            labels=labels,
            timestamp=timestamp,
            meta={
                "scene": seq,
                "frame": frame,
                "label_map": self.label_map_name if labels is not None else "",
            },
        )

    def plan(self, key: str) -> ReadPlan:
        """The read plan of sample "SEQ_FRAME" (calib, pose, time parsed here; files read later)."""
        seq, _, frame = key.rpartition("_")
        try:
            return self._plan(key, seq, frame)
        except SampleReadError as err:
            return failed_plan(key, self.name, seq, err)

    def _plan(self, key: str, seq: str, frame: str) -> ReadPlan:
        seq_dir = self.sequences_dir / seq
        if not seq or not frame.isdigit():
            raise SampleReadError(key, self.sequences_dir, "key is not 'SEQ_FRAME', e.g. '08_000123'")
        calib_path = seq_dir / "calib.txt"
        calib = read_calibration(key, calib_path)
        ego_to_global = self._ego_pose(key, seq_dir, int(frame), calib)
        timestamp = self._timestamp(seq_dir, int(frame))
        cameras = []
        for camera in self.camera_names:
            k, cam_to_ego = camera_calibration(key, calib_path, calib, camera)
            image = str(seq_dir / camera / f"{frame}.png")
            cameras.append(
                CameraPlan(camera, image, None, k, cam_to_ego, ego_to_global, timestamp, f"{key}/{camera}")
            )
        labels = None
        if (seq_dir / "labels").is_dir():
            path = str(seq_dir / "labels" / f"{frame}.label")
            labels = LabelPlan(path, "uint32", RAW_ID_MASK, self._lookup, SEMANTICKITTI_UNKNOWN)
        return ReadPlan(
            key=key,
            dataset=self.name,
            chunk=seq,
            points=str(seq_dir / "velodyne" / f"{frame}.bin"),
            point_columns=POINT_COLUMNS,
            lidar_to_ego=np.eye(4),
            ego_to_global=ego_to_global,
            timestamp=timestamp,
            cameras=tuple(cameras),
            labels=labels,
            meta={"scene": seq, "frame": frame, "label_map": self.label_map_name if labels else ""},
        )

    # ---------------------------------------------------------------- pieces of a sample

    def _read_labels(self, key: str, seq_dir: Path, frame: str, n_points: int) -> np.ndarray | None:
        if not (seq_dir / "labels").is_dir():
            return None  # unlabelled sequence (e.g. the test set 11-21)
        path = seq_dir / "labels" / f"{frame}.label"
        raw = read_point_labels(key, path, np.uint32, n_points) & RAW_ID_MASK  # (N,)
        labels, bad = map_labels(raw, self._lookup)
        if len(bad):
            raise SampleReadError(
                key, path, SEMANTICKITTI_UNKNOWN.format(ids=bad.tolist()[:UNKNOWN_IDS_SHOWN])
            )
        return labels

    def _ego_pose(self, key: str, seq_dir: Path, frame: int, calib: dict[str, np.ndarray]) -> np.ndarray:
        """Velodyne -> world of poses.txt (camera-0 poses) at `frame`; identity without poses.txt."""
        path = seq_dir / "poses.txt"
        if not path.exists():
            return np.eye(4)
        if seq_dir.name not in self._poses:
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise SampleReadError(key, path, f"cannot read poses: {exc}") from None
            rows = [parse_matrix(line.split()) for line in lines if line.strip()]
            bad = [i + 1 for i, m in enumerate(rows) if m is None]
            if bad:
                raise SampleReadError(key, path, f"lines {bad[:5]} are not 12 numbers")
            self._poses[seq_dir.name] = np.stack(rows) if rows else np.zeros((0, 4, 4))
        poses = self._poses[seq_dir.name]  # (F, 4, 4)
        if frame >= len(poses):
            raise SampleReadError(key, path, f"no pose for frame {frame} ({len(poses)} poses)")
        if "Tr" not in calib:
            raise SampleReadError(key, seq_dir / "calib.txt", "calibration has no 'Tr:' entry")
        return poses[frame] @ calib["Tr"]

    def _timestamp(self, seq_dir: Path, frame: int) -> int:
        """Microseconds from times.txt (seconds per frame, read once per sequence); 0 without it."""
        path = seq_dir / "times.txt"
        if not path.exists():
            return 0
        key = f"{seq_dir.name}_{frame:06d}"
        if seq_dir.name not in self._times:
            try:
                self._times[seq_dir.name] = [float(t) for t in path.read_text().split()]
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise SampleReadError(key, path, f"cannot read times: {exc}") from None
        times = self._times[seq_dir.name]
        if frame >= len(times):
            raise SampleReadError(key, path, f"no time for frame {frame} ({len(times)} lines)")
        return int(round(times[frame] * 1e6))
