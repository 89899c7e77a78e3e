"""Writes the synthetic world in the SemanticKITTI layout (KITTI odometry + semantic labels).

Layout under `out_dir/sequences/<XX>/`:
  velodyne/NNNNNN.bin   float32 (N, 4): x y z remission (0-1), velodyne frame (x fwd, y left, z up)
  labels/NNNNNN.label   uint32 (N,): lower 16 bits SemanticKITTI raw semantic id, upper 16 instance
  image_2/NNNNNN.png    the left colour camera (rendered like CAM_FRONT, at the LiDAR time)
  calib.txt             P0..P3 (3x4) and Tr (velodyne -> rectified camera 0), KITTI odometry format
  poses.txt             camera-0 pose of each frame in the first frame's camera-0 frame (3x4 rows)
  times.txt             seconds since the sequence start
Side outputs (side_outputs=True): out_dir/side_outputs/sequences/<XX>/image_2/NNNNNN_class.png
(raw semantic ids), NNNNNN_depth.png and NNNNNN_normal.png (see side_outputs.py). KITTI sensors are triggered
together, so the image is rendered at the sweep's timestamp. Projecting a velodyne point:
P2 @ Tr @ [x, y, z, 1].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hvdistill.config import SynthConfig
from hvdistill.geometry.transforms import invert_transform, make_transform
from hvdistill.synthetic.classes import WORLD_CLASSES, kitti_lut
from hvdistill.synthetic.frame import Rig, generate_frame
from hvdistill.synthetic.layout import build_world
from hvdistill.synthetic.sensors import Lidar, build_camera
from hvdistill.synthetic.side_outputs import write_side_outputs

VELODYNE_TRANSLATION = (0.0, 0.0, 1.73)  # ego frame; KITTI's HDL-64 height
CAM0_TRANSLATION = (0.27, 0.0, 1.65)  # rectified camera 0, ego frame
STEREO_BASELINE = 0.54  # camera 1 / 3 lie this far right of camera 0 / 2
CAM2_OFFSET = 0.06  # camera 2 (left colour) lies this far left of camera 0
THING_IDS = np.array([c.is_thing for c in WORLD_CLASSES])


def build_kitti_rig(cfg: SynthConfig) -> tuple[Rig, np.ndarray]:
    """(the rig with its one image_2 camera, (4, 4) camera-0 -> ego)."""
    elev = np.deg2rad(np.linspace(cfg.lidar_fov_up_deg, cfg.lidar_fov_down_deg, cfg.lidar_beams))
    lidar = Lidar(make_transform(np.eye(3), VELODYNE_TRANSLATION), elev, cfg.lidar_points_per_beam)
    cam = build_camera("CAM_FRONT", cfg.image_width, cfg.image_height)
    cam0_to_ego = make_transform(cam.cam_to_ego[:3, :3], CAM0_TRANSLATION)
    cam.name = "image_2"
    cam.cam_to_ego = cam0_to_ego @ make_transform(np.eye(3), (-CAM2_OFFSET, 0.0, 0.0))
    return Rig(lidar, [cam]), cam0_to_ego


def calib_text(rig: Rig, cam0_to_ego: np.ndarray) -> str:
    """calib.txt: P0..P3 project rectified camera-0 coordinates; Tr maps velodyne -> camera 0."""
    k = rig.cameras[0].intrinsics
    lines = []
    for i, x_offset in enumerate((0.0, -STEREO_BASELINE, CAM2_OFFSET, CAM2_OFFSET - STEREO_BASELINE)):
        p = k @ np.hstack([np.eye(3), [[x_offset], [0.0], [0.0]]])  # (3, 4)
        lines.append(f"P{i}: " + " ".join(f"{v:.12e}" for v in p.ravel()))
    tr = invert_transform(cam0_to_ego) @ rig.lidar.lidar_to_ego
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in tr[:3].ravel()))
    return "\n".join(lines) + "\n"


def write_semantickitti(
    out_dir: str | Path,
    cfg: SynthConfig,
    sequences: list[str] | None = None,
    side_outputs: bool = False,
    progress: bool = True,
) -> Path:
    """Write each sequence (cfg.frames_per_scene frames) under out_dir/sequences; returns out_dir."""
    root = Path(out_dir)
    sequences = ["00", "08"] if sequences is None else list(sequences)
    rig, cam0_to_ego = build_kitti_rig(cfg)
    bar = tqdm(total=len(sequences) * cfg.frames_per_scene, desc="synth semantickitti", disable=not progress)
    for seq in sequences:
        _write_sequence(root, seq, cfg, rig, cam0_to_ego, side_outputs, bar)
    bar.close()
    (root / "synth.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return root


def _write_sequence(
    root: Path, seq: str, cfg: SynthConfig, rig: Rig, cam0_to_ego: np.ndarray, side_outputs: bool, bar: tqdm
) -> None:
    seq_dir = root / "sequences" / seq
    for sub in ("velodyne", "labels", "image_2"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    scene_index = int(seq) if seq.isdigit() else sum(map(ord, seq))
    world = build_world(cfg, scene_index, cfg.frame_interval_s * max(cfg.frames_per_scene - 1, 0))
    (seq_dir / "calib.txt").write_text(calib_text(rig, cam0_to_ego))
    poses, times, first = [], [], None
    lut = kitti_lut()
    for fi in range(cfg.frames_per_scene):
        t = fi * cfg.frame_interval_s
        frame = generate_frame(cfg, scene_index, fi, world=world, rig=rig, camera_times_s=[t])
        name = f"{fi:06d}"
        scan = np.concatenate([frame.points[:, :3], frame.points[:, 3:4] / 255.0], axis=1)
        scan.astype(np.float32).tofile(seq_dir / "velodyne" / f"{name}.bin")
        inst = np.where(THING_IDS[frame.classes], frame.instances, 0).astype(np.uint32)
        ((inst << 16) | lut[frame.classes]).astype(np.uint32).tofile(seq_dir / "labels" / f"{name}.label")
        cam = frame.cameras[0]
        rel = f"sequences/{seq}/image_2/{name}.png"
        Image.fromarray(cam.image).save(root / rel)
        if side_outputs:
            write_side_outputs(root, rel, lut[cam.classes].astype(np.uint8), cam.depth, cam.normals)
        cam0_global = frame.ego_to_global @ cam0_to_ego
        first = cam0_global if first is None else first
        poses.append((invert_transform(first) @ cam0_global)[:3].ravel())
        times.append(t)
        bar.update(1)
    (seq_dir / "poses.txt").write_text("".join(" ".join(f"{v:.12e}" for v in p) + "\n" for p in poses))
    (seq_dir / "times.txt").write_text("".join(f"{t:.6e}\n" for t in times))
