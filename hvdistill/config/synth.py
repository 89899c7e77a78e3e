"""The `synth` section: the procedural LiDAR+camera world's settings, and their checks.

Only `hvdistill synth` (and the demo, tests and benchmarks that write a world) read it; a
pretraining run does not carry it (see `RUN_SECTIONS` in hvdistill/config/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
from hvdistill.config.loader import check_range

if TYPE_CHECKING:
    from hvdistill.config import Config

MIN_IMAGE_SIDE = 16  # smaller images leave the renderer nothing to draw objects on
ARGOVERSE2_IMAGE_SIZE = (2048, 1550)  # a real landscape ring camera image (the front centre is portrait)
ARGOVERSE2_SPLITS = ("train", "val", "test")
ARGOVERSE2_MAX_LASER = 256  # laser_number is a uint8 over both units


@dataclass(slots=True, kw_only=True)
class Argoverse2SynthConfig:
    """The Argoverse 2 sensor layout of the world (`hvdistill synth --format argoverse2`).

    Sweeps per log come from `synth.frames_per_scene`; range, noise, dropout, azimuth steps
    (`synth.lidar_points_per_beam`), speed and JPEG quality from the shared `synth` keys.
    """

    logs: int = 1  # logs written per split
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # <root>/<split>/<log id>/
    image_scale: float = 0.25  # ring images at this fraction of 2048x1550 (1.0 = the real size)
    lidar_hz: float = 10.0  # sweeps per second
    camera_hz: float = 20.0  # images per second of each ring camera
    camera_offset_s: float = -0.015  # the first ring camera fires this long after each sweep (< 0: before)
    camera_stagger_s: float = 0.006  # each next ring camera fires this much after the previous one
    lidar_beams: int = 32  # beams of each of the two stacked units (laser_number 0 .. 2 x beams - 1)
    lidar_fov_up_deg: float = 15.0  # one unit's beams in its own frame (a VLP-32C: +15 .. -25 degrees)
    lidar_fov_down_deg: float = -25.0


@dataclass(slots=True, kw_only=True)
class SynthConfig:
    """The procedural LiDAR+camera world used for demos, tests and benchmarks."""

    scenes: int = 2  # nuScenes layout: scenes written
    kitti_sequences: list[str] = field(default_factory=lambda: ["00", "08"])  # SemanticKITTI layout
    frames_per_scene: int = 4  # keyframes per scene / sequence; sweeps per Argoverse 2 log
    seed: int = 0
    image_width: int = 800
    image_height: int = 450
    lidar_beams: int = 32
    lidar_points_per_beam: int = 1084  # ~32 x 1084 = 34.7k rays, ~30k returns
    lidar_fov_up_deg: float = 10.0
    lidar_fov_down_deg: float = -30.0
    lidar_max_range: float = 70.0
    lidar_range_noise: float = 0.02
    lidar_dropout: float = 0.05
    frame_interval_s: float = 0.5  # keyframes at 2 Hz like nuScenes
    camera_delay_s: float = 0.02  # cameras fire after the LiDAR; the ego moves in between
    ego_speed_mps: float = 8.0
    render_threads: int = 2  # cameras rendered in parallel threads (output independent of it)
    camera_stagger_s: float = 0.005  # each camera fires this much after the previous one
    object_density: float = 1.0  # scales how densely objects are placed along the road
    lidar_intensity_noise: float = 0.05  # relative noise of the LiDAR intensity
    image_noise_std: float = 3.0  # Gaussian pixel noise of the rendered images (0-255 scale)
    jpeg_quality: int = 90  # quality of the written camera JPEGs (nuScenes and Argoverse 2 layouts)
    argoverse2: Argoverse2SynthConfig = field(default_factory=Argoverse2SynthConfig)


def synth_problems(cfg: Config) -> list[str]:
    """Every inconsistency inside the `synth` section, each with its fix."""
    p: list[str] = []
    s = cfg.synth
    for key in ("scenes", "frames_per_scene", "lidar_beams", "lidar_points_per_beam", "render_threads"):
        if getattr(s, key) < 1:
            p.append(f"synth.{key}: {getattr(s, key)} must be >= 1")
    for key in ("image_width", "image_height"):
        if getattr(s, key) < MIN_IMAGE_SIDE:
            p.append(f"synth.{key}: {getattr(s, key)} must be at least {MIN_IMAGE_SIDE} pixels")
    if not s.kitti_sequences or len(set(s.kitti_sequences)) != len(s.kitti_sequences):
        p.append(f"synth.kitti_sequences: {s.kitti_sequences} must name at least one sequence, each once")
    if s.lidar_fov_down_deg >= s.lidar_fov_up_deg:
        p.append("synth.lidar_fov_down_deg: must be below synth.lidar_fov_up_deg")
    if s.lidar_max_range <= 0 or s.frame_interval_s <= 0:
        p.append("synth.lidar_max_range / synth.frame_interval_s: must be > 0")
    check_range(p, "synth.lidar_dropout", s.lidar_dropout, 0.0, 1.0)
    if not 1 <= s.jpeg_quality <= 100:
        p.append(f"synth.jpeg_quality: {s.jpeg_quality} must be in 1..100")
    return p + argoverse2_problems(s.argoverse2)


def argoverse2_camera_offsets(a: Argoverse2SynthConfig, cameras: int) -> list[float]:
    """Seconds from a sweep time to each ring camera's firing time (its images are 1/camera_hz apart)."""
    return [a.camera_offset_s + i * a.camera_stagger_s for i in range(cameras)]


def argoverse2_problems(a: Argoverse2SynthConfig) -> list[str]:
    """Every inconsistency inside `synth.argoverse2`, each with its fix."""
    p: list[str] = []
    key = "synth.argoverse2"
    if a.logs < 1:
        p.append(f"{key}.logs: {a.logs} must be >= 1")
    if not a.splits or len(set(a.splits)) != len(a.splits) or not set(a.splits) <= set(ARGOVERSE2_SPLITS):
        p.append(f"{key}.splits: {a.splits} must name some of {list(ARGOVERSE2_SPLITS)}, each once")
    small = min(ARGOVERSE2_IMAGE_SIZE) * a.image_scale
    if not 0 < a.image_scale <= 1 or round(small) < MIN_IMAGE_SIDE:
        p.append(
            f"{key}.image_scale: {a.image_scale} must be in (0, 1] and leave the short image side "
            f"({min(ARGOVERSE2_IMAGE_SIZE)} x scale) at least {MIN_IMAGE_SIDE} pixels"
        )
    if not (a.lidar_hz > 0 and a.camera_hz > 0):
        p.append(f"{key}.lidar_hz / camera_hz: {a.lidar_hz} / {a.camera_hz} must be > 0")
    elif a.camera_stagger_s < 0:
        p.append(f"{key}.camera_stagger_s: {a.camera_stagger_s} must be >= 0")
    else:
        # within half a camera period, each sweep's nearest image is the one fired for it (and
        # within the devkit's tolerance at the default 20 Hz)
        half = 0.5 / a.camera_hz
        offsets = argoverse2_camera_offsets(a, len(ARGOVERSE2_RING_CAMERAS))
        if max(abs(o) for o in offsets) >= half:
            p.append(
                f"{key}.camera_offset_s / camera_stagger_s: ring camera offsets {offsets[0]:.4f} .. "
                f"{offsets[-1]:.4f} s must stay within +-{half:.4f} s (half the camera period)"
            )
    if not 1 <= a.lidar_beams <= ARGOVERSE2_MAX_LASER // 2:
        most = ARGOVERSE2_MAX_LASER // 2
        p.append(f"{key}.lidar_beams: {a.lidar_beams} must be in 1..{most} (laser_number is a uint8)")
    if a.lidar_fov_down_deg >= a.lidar_fov_up_deg:
        p.append(f"{key}.lidar_fov_down_deg: must be below {key}.lidar_fov_up_deg")
    return p
