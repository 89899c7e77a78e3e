"""Writes the synthetic world in the Argoverse 2 sensor-dataset layout, opened by the `av2` devkit.

Layout under `out_dir/<split>/<log id>/` (splits `synth.argoverse2.splits`, `logs` per split,
`synth.frames_per_scene` sweeps per log; log ids are UUIDs derived from the seed):
  sensors/lidar/<t_ns>.feather         x, y, z float16 (metres, EGO frame at t_ns), intensity
                                       uint8 (0-255), laser_number uint8 (0-63), offset_ns int32
  sensors/cameras/<ring cam>/<t_ns>.jpg   the seven ring cameras
  calibration/egovehicle_SE3_sensor.feather   sensor_name, qw qx qy qz, tx_m ty_m tz_m (sensor -> ego)
                                       for the ring cameras, up_lidar and down_lidar
  calibration/intrinsics.feather       sensor_name, fx_px fy_px cx_px cy_px, k1 k2 k3 (0: undistorted),
                                       height_px width_px uint16
  city_SE3_egovehicle.feather          timestamp_ns int64, qw qx qy qz, tx_m ty_m tz_m: a pose at
                                       EVERY LiDAR and camera timestamp (the devkit looks them up exactly)
  annotations.feather                  the devkit's cuboid table schema with no rows (no boxes)
Side outputs (side_outputs=True): out_dir/side_outputs/<split>/<log>/sensors/cameras/<cam>/<t_ns>_class.png
(nuScenes-lidarseg indices: AV2 has no semantic label space), _depth.png, _normal.png.
The column types are those of the real files (read from the devkit's sample log).

Timing: sweeps at `lidar_hz` (10 Hz), each ring camera at `camera_hz` (20 Hz) with its own offset
(`camera_offset_s` + i x `camera_stagger_s`, -15 .. +21 ms by default), so two images of each
camera fall in every sweep period and the nearest one in time may precede or follow the sweep;
the ego keeps moving in between. Rendering goes through `generate_frame` (one call per sweep: the
up unit's sweep and every image of the period); the down unit's sweep is cast with `sweep`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
from PIL import Image
from tqdm import tqdm

from hvdistill.config import SynthConfig
from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
from hvdistill.config.synth import Argoverse2SynthConfig, argoverse2_camera_offsets
from hvdistill.geometry.transforms import rotation_to_quaternion
from hvdistill.synthetic.argoverse2_rig import DOWN_LIDAR, UP_LIDAR, Argoverse2Rig, build_argoverse2_rig
from hvdistill.synthetic.classes import nuscenes_lut
from hvdistill.synthetic.frame import Frame, Rig, generate_frame, sweep
from hvdistill.synthetic.layout import build_world
from hvdistill.synthetic.side_outputs import write_side_outputs
from hvdistill.synthetic.world import World

BASE_TIMESTAMP_NS = 315_966_265_000_000_000  # an Argoverse-2-era timestamp (January 2020)
LOG_SPACING_NS = 3_600_000_000_000  # logs start an hour apart
NS = 1_000_000_000
FEATHER_COMPRESSION = "lz4"  # pyarrow's default for Feather v2
POSE_COLUMNS = ("qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m")
ANNOTATION_SCHEMA = pa.schema(
    [("timestamp_ns", pa.int64()), ("track_uuid", pa.string()), ("category", pa.string())]
    + [(c, pa.float64()) for c in ("length_m", "width_m", "height_m", *POSE_COLUMNS)]
    + [("num_interior_pts", pa.int64())]
)


def log_id(seed: int, split: str, index: int) -> str:
    """A deterministic UUID-shaped log id, like the real ones."""
    return str(uuid.UUID(hashlib.md5(f"{seed}/{split}/{index}".encode()).hexdigest()))


def camera_shots(cfg: SynthConfig, sweep_index: int) -> list[tuple[int, int]]:
    """(ring camera index, ns after the log start) of every image fired in a sweep's period.

    Camera i fires at j / camera_hz + offset_i; an image belongs to the sweep whose time is
    nearest (periods [t - P/2, t + P/2) partition the time line)."""
    a = cfg.argoverse2
    sweep_ns, cam_ns = round(NS / a.lidar_hz), round(NS / a.camera_hz)
    start = sweep_index * sweep_ns - sweep_ns // 2
    shots = []
    for i, offset in enumerate(argoverse2_camera_offsets(a, len(ARGOVERSE2_RING_CAMERAS))):
        off = round(offset * NS)
        first = -((off - start) // cam_ns)  # ceil((start - off) / cam_ns)
        end = -((off - start - sweep_ns) // cam_ns)  # ceil((start + sweep_ns - off) / cam_ns)
        shots += [(i, j * cam_ns + off) for j in range(first, end)]
    return shots


def write_argoverse2(
    out_dir: str | Path,
    cfg: SynthConfig,
    splits: list[str] | None = None,
    side_outputs: bool = False,
    progress: bool = True,
) -> Path:
    """Write `synth.argoverse2.logs` logs per split (default `synth.argoverse2.splits`); returns out_dir."""
    root = Path(out_dir)
    splits = list(cfg.argoverse2.splits if splits is None else splits)
    rig = build_argoverse2_rig(cfg)
    logs = cfg.argoverse2.logs
    bar = tqdm(total=len(splits) * logs * cfg.frames_per_scene, desc="synth argoverse2", disable=not progress)
    for s, split in enumerate(splits):
        for i in range(logs):
            log_dir = root / split / log_id(cfg.seed, split, i)
            _write_log(root, log_dir, cfg, s * logs + i, rig, side_outputs, bar)
    bar.close()
    (root / "synth.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return root


def _write_log(
    root: Path, log_dir: Path, cfg: SynthConfig, scene: int, rig: Argoverse2Rig, side_outputs: bool, bar: tqdm
) -> None:
    a = cfg.argoverse2
    timed = dataclasses.replace(cfg, frame_interval_s=1.0 / a.lidar_hz)  # generate_frame's sweep clock
    world = build_world(timed, scene, timed.frame_interval_s * max(cfg.frames_per_scene, 1))
    base = BASE_TIMESTAMP_NS + scene * LOG_SPACING_NS
    sweep_ns = round(NS / a.lidar_hz)
    poses: dict[int, np.ndarray] = {}  # timestamp_ns -> (4, 4) ego -> city
    for cam in ARGOVERSE2_RING_CAMERAS:
        (log_dir / "sensors" / "cameras" / cam).mkdir(parents=True, exist_ok=True)
    (log_dir / "sensors" / "lidar").mkdir(parents=True, exist_ok=True)
    for k in range(cfg.frames_per_scene):
        shots = camera_shots(cfg, k)
        frame_rig = Rig(rig.units[0], [rig.cameras[i] for i, _ in shots])
        frame = generate_frame(timed, scene, k, world, frame_rig, [ns / NS for _, ns in shots])
        stamp = base + k * sweep_ns
        _write_sweep(log_dir, stamp, frame, _down_sweep(world, rig, timed, scene, k, frame.time_s), rig, a)
        poses[stamp] = frame.ego_to_global
        for (_, ns), image in zip(shots, frame.cameras):
            rel = f"{log_dir.relative_to(root).as_posix()}/sensors/cameras/{image.name}/{base + ns}.jpg"
            Image.fromarray(image.image).save(root / rel, quality=cfg.jpeg_quality)
            if side_outputs:
                write_side_outputs(root, rel, nuscenes_lut()[image.classes], image.depth, image.normals)
            poses[base + ns] = image.ego_to_global
        bar.update(1)
    _write_tables(log_dir, rig, poses)


def _down_sweep(
    world: World, rig: Argoverse2Rig, cfg: SynthConfig, scene: int, k: int, t: float
) -> np.ndarray:
    """(N, 5) float32 returns of the down unit, its own frame (x, y, z, intensity, beam)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, scene, k, 2]))
    points, _, _ = sweep(world, rig.units[1], t, cfg, rng)
    return points


def _unit_columns(points: np.ndarray, to_ego: np.ndarray, first_laser: int, sweep_ns: int) -> dict:
    """One unit's (N, 5) returns as AV2 columns: ego-frame xyz, uint8 intensity and laser, offsets."""
    xyz = points[:, :3].astype(np.float64) @ to_ego[:3, :3].T + to_ego[:3, 3]  # (N, 3) ego frame
    azimuth = np.mod(np.arctan2(points[:, 1], points[:, 0]), 2 * np.pi)  # (N,) in the unit's frame
    return {
        "x": xyz[:, 0].astype(np.float16),
        "y": xyz[:, 1].astype(np.float16),
        "z": xyz[:, 2].astype(np.float16),
        "intensity": np.clip(np.round(points[:, 3]), 0, 255).astype(np.uint8),
        "laser_number": (points[:, 4] + first_laser).astype(np.uint8),
        "offset_ns": (azimuth / (2 * np.pi) * sweep_ns).astype(np.int32),  # when the spin reaches it
    }


def _write_sweep(
    log_dir: Path, stamp: int, frame: Frame, down: np.ndarray, rig: Argoverse2Rig, a: Argoverse2SynthConfig
) -> None:
    sweep_ns = round(NS / a.lidar_hz)
    up_cols = _unit_columns(frame.points, rig.units[0].lidar_to_ego, 0, sweep_ns)
    down_cols = _unit_columns(down, rig.units[1].lidar_to_ego, a.lidar_beams, sweep_ns)
    table = pa.table({name: np.concatenate([up_cols[name], down_cols[name]]) for name in up_cols})
    feather.write_feather(
        table, log_dir / "sensors" / "lidar" / f"{stamp}.feather", compression=FEATHER_COMPRESSION
    )


def _pose_columns(transforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """qw .. tz_m float64 columns of (4, 4) sensor -> parent transforms."""
    quats = np.array([rotation_to_quaternion(t[:3, :3]) for t in transforms]).reshape(-1, 4)  # (T, 4) wxyz
    trans = np.array([t[:3, 3] for t in transforms], dtype=np.float64).reshape(-1, 3)  # (T, 3)
    return dict(zip(POSE_COLUMNS, [*quats.T, *trans.T]))


def _write_tables(log_dir: Path, rig: Argoverse2Rig, poses: dict[int, np.ndarray]) -> None:
    calib = log_dir / "calibration"
    calib.mkdir(parents=True, exist_ok=True)
    sensors = [(c.name, c.cam_to_ego) for c in rig.cameras]
    sensors += [(UP_LIDAR, rig.units[0].lidar_to_ego), (DOWN_LIDAR, rig.units[1].lidar_to_ego)]
    extrinsics = {"sensor_name": [n for n, _ in sensors], **_pose_columns([t for _, t in sensors])}
    feather.write_feather(pa.table(extrinsics), calib / "egovehicle_SE3_sensor.feather")
    k = np.array([c.intrinsics for c in rig.cameras])  # (C, 3, 3)
    zeros = np.zeros(len(rig.cameras))
    intrinsics = {
        "sensor_name": [c.name for c in rig.cameras],
        "fx_px": k[:, 0, 0],
        "fy_px": k[:, 1, 1],
        "cx_px": k[:, 0, 2],
        "cy_px": k[:, 1, 2],
        "k1": zeros,
        "k2": zeros,
        "k3": zeros,
        "height_px": np.array([c.height for c in rig.cameras], dtype=np.uint16),
        "width_px": np.array([c.width for c in rig.cameras], dtype=np.uint16),
    }
    feather.write_feather(pa.table(intrinsics), calib / "intrinsics.feather")
    stamps = sorted(poses)
    city = {"timestamp_ns": np.array(stamps, dtype=np.int64), **_pose_columns([poses[t] for t in stamps])}
    feather.write_feather(pa.table(city), log_dir / "city_SE3_egovehicle.feather")
    feather.write_feather(ANNOTATION_SCHEMA.empty_table(), log_dir / "annotations.feather")
