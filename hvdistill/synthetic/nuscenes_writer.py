"""Writes the synthetic world in the nuScenes layout, loadable by nuscenes-devkit 1.2.0.

Layout under `out_dir`:
  <version>/*.json                       the 13 devkit tables + lidarseg.json
  samples/LIDAR_TOP/*.pcd.bin            float32 (N, 5): x y z intensity ring, LiDAR frame
  samples/CAM_*/*.jpg                    the six camera images
  lidarseg/<version>/<sd token>_lidarseg.bin   uint8 (N,) nuScenes-lidarseg indices (0-31)
  maps/<token>.png                       the map table's semantic-prior mask (a placeholder)
  side_outputs/samples/CAM_*/*_class.png, *_depth.png, *_normal.png   (side_outputs=True; side_outputs.py)
  synth.json                             the SynthConfig that generated the dataset
Scenes carry real nuScenes scene names, alternating between the official train and val lists
(and within them the mini_train / mini_val ones first), so the devkit's split helpers apply.
Every keyframe has a LIDAR_TOP and six camera sample_data with their own ego poses; objects
within sight get sample_annotation boxes chained per instance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hvdistill.config import NUSCENES_CAMERAS, SynthConfig
from hvdistill.synthetic import nuscenes_tables as nt
from hvdistill.synthetic.classes import nuscenes_lut
from hvdistill.synthetic.frame import Frame, build_rig, generate_frame
from hvdistill.synthetic.layout import build_world
from hvdistill.synthetic.side_outputs import write_side_outputs
from hvdistill.synthetic.world import World

VEHICLE = "n015"
BASE_TIMESTAMP_US = 1532402927647951  # a nuScenes-era epoch (2018-07-24)


def token(*parts: object) -> str:
    """Deterministic 32-hex token from its parts."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def write_nuscenes(
    out_dir: str | Path,
    cfg: SynthConfig,
    version: str = "v1.0-trainval",
    side_outputs: bool = False,
    progress: bool = True,
) -> Path:
    """Generate cfg.scenes x cfg.frames_per_scene keyframes into `out_dir`; returns out_dir."""
    root = Path(out_dir)
    for sub in [
        version,
        "samples/LIDAR_TOP",
        f"lidarseg/{version}",
        "maps",
        *[f"samples/{c}" for c in NUSCENES_CAMERAS],
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    tables = nt.static_tables(token)
    names = nt.scene_names(cfg.scenes)
    bar = tqdm(total=cfg.scenes * cfg.frames_per_scene, desc="synth nuscenes", disable=not progress)
    for si, name in enumerate(names):
        _write_scene(root, version, cfg, si, name, tables, side_outputs, bar)
    bar.close()
    map_token = token(cfg.seed, "map")
    tables["map"] = [
        {
            "token": map_token,
            "log_tokens": [r["token"] for r in tables["log"]],
            "category": "semantic_prior",
            "filename": f"maps/{map_token}.png",
        }
    ]
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "maps" / f"{map_token}.png")
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    (root / "synth.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return root


def _write_scene(
    root: Path,
    version: str,
    cfg: SynthConfig,
    si: int,
    name: str,
    tables: dict,
    side_outputs: bool,
    bar: tqdm,
) -> None:
    seed = cfg.seed
    duration = cfg.frame_interval_s * max(cfg.frames_per_scene - 1, 0)
    world = build_world(cfg, si, duration)
    rig = build_rig(cfg)
    log_token, scene_token = token(seed, si, "log"), token(seed, si, "scene")
    tables["log"].append(nt.log_record(log_token, si, VEHICLE))
    channels = ["LIDAR_TOP", *NUSCENES_CAMERAS]
    calib = {ch: token(seed, si, "calib", ch) for ch in channels}
    tables["calibrated_sensor"] += nt.calibrated_sensors(calib, rig, token)
    base_us = BASE_TIMESTAMP_US + si * 3_600_000_000
    samples = [token(seed, si, f, "sample") for f in range(cfg.frames_per_scene)]
    prev_sd: dict[str, str] = {ch: "" for ch in channels}
    sd_rows: dict[str, list[dict]] = {ch: [] for ch in channels}
    annotations: list[list[dict]] = []
    for fi, sample_token in enumerate(samples):
        frame = generate_frame(cfg, si, fi, world=world, rig=rig)
        ts_lidar = base_us + int(round(frame.time_s * 1e6))
        tables["sample"].append(
            {
                "token": sample_token,
                "timestamp": ts_lidar,
                "scene_token": scene_token,
                "prev": samples[fi - 1] if fi else "",
                "next": samples[fi + 1] if fi + 1 < len(samples) else "",
            }
        )
        lidar_sd = _write_lidar(root, version, tables, frame, sample_token, calib["LIDAR_TOP"], ts_lidar, si)
        sd_rows["LIDAR_TOP"].append(lidar_sd)
        for cam in frame.cameras:
            ts = base_us + int(round(cam.time_s * 1e6))
            sd_rows[cam.name].append(
                _write_camera(root, tables, cfg, cam, sample_token, calib[cam.name], ts, si, side_outputs)
            )
        annotations.append(nt.annotations(world, frame, sample_token, seed, si, token))
        bar.update(1)
    for ch, rows in sd_rows.items():
        for i, row in enumerate(rows):
            row["prev"] = rows[i - 1]["token"] if i else prev_sd[ch]
            row["next"] = rows[i + 1]["token"] if i + 1 < len(rows) else ""
        tables["sample_data"] += rows
    tables["sample_annotation"] += nt.chain_annotations(annotations)
    tables["instance"] += nt.instances(world, annotations, seed, si, token)
    tables["scene"].append(
        {
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": len(samples),
            "first_sample_token": samples[0],
            "last_sample_token": samples[-1],
            "name": name,
            "description": f"synthetic drive, seed {seed}, scene {si}",
        }
    )


def _ego_pose(tables: dict, sd_token: str, timestamp: int, ego_to_global: np.ndarray) -> str:
    tables["ego_pose"].append({"token": sd_token, "timestamp": timestamp, **nt.pose_fields(ego_to_global)})
    return sd_token


def _stem(si: int, channel: str, timestamp: int) -> str:
    return f"{VEHICLE}-2018-07-24-11-22-45+0800-s{si:03d}__{channel}__{timestamp}"


def _write_lidar(
    root: Path, version: str, tables: dict, frame: Frame, sample_token: str, calib: str, ts: int, si: int
) -> dict:
    sd_token = token(sample_token, "LIDAR_TOP")
    rel = f"samples/LIDAR_TOP/{_stem(si, 'LIDAR_TOP', ts)}.pcd.bin"
    frame.points.astype(np.float32).tofile(root / rel)
    seg_rel = f"lidarseg/{version}/{sd_token}_lidarseg.bin"
    nuscenes_lut()[frame.classes].astype(np.uint8).tofile(root / seg_rel)
    tables["lidarseg"].append({"token": sd_token, "sample_data_token": sd_token, "filename": seg_rel})
    return {
        "token": sd_token,
        "sample_token": sample_token,
        "ego_pose_token": _ego_pose(tables, sd_token, ts, frame.ego_to_global),
        "calibrated_sensor_token": calib,
        "timestamp": ts,
        "fileformat": "pcd",
        "is_key_frame": True,
        "height": 0,
        "width": 0,
        "filename": rel,
        "prev": "",
        "next": "",
    }


def _write_camera(
    root: Path,
    tables: dict,
    cfg: SynthConfig,
    cam,
    sample_token: str,
    calib: str,
    ts: int,
    si: int,
    side_outputs: bool,
) -> dict:
    sd_token = token(sample_token, cam.name)
    rel = f"samples/{cam.name}/{_stem(si, cam.name, ts)}.jpg"
    Image.fromarray(cam.image).save(root / rel, quality=cfg.jpeg_quality)
    if side_outputs:
        write_side_outputs(root, rel, nuscenes_lut()[cam.classes], cam.depth, cam.normals)
    h, w = cam.image.shape[:2]
    return {
        "token": sd_token,
        "sample_token": sample_token,
        "ego_pose_token": _ego_pose(tables, sd_token, ts, cam.ego_to_global),
        "calibrated_sensor_token": calib,
        "timestamp": ts,
        "fileformat": "jpg",
        "is_key_frame": True,
        "height": h,
        "width": w,
        "filename": rel,
        "prev": "",
        "next": "",
    }


def world_of_scene(cfg: SynthConfig, scene_index: int) -> World:
    """The world a scene of `write_nuscenes(cfg)` was generated from."""
    return build_world(cfg, scene_index, cfg.frame_interval_s * max(cfg.frames_per_scene - 1, 0))
