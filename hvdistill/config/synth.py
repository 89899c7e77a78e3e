"""The `synth` section: the procedural LiDAR+camera world's settings, and their checks.

Only `hvdistill synth` (and the demo, tests and benchmarks that write a world) read it; a
pretraining run does not carry it (see `RUN_SECTIONS` in hvdistill/config/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hvdistill.config.loader import check_range

if TYPE_CHECKING:
    from hvdistill.config import Config

MIN_IMAGE_SIDE = 16  # smaller images leave the renderer nothing to draw objects on


@dataclass(slots=True, kw_only=True)
class SynthConfig:
    """The procedural LiDAR+camera world used for demos, tests and benchmarks."""

    scenes: int = 2  # nuScenes layout: scenes written
    kitti_sequences: list[str] = field(default_factory=lambda: ["00", "08"])  # SemanticKITTI layout
    frames_per_scene: int = 4  # keyframes per scene / sequence
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
    jpeg_quality: int = 90  # quality of the written camera JPEGs (nuScenes layout)


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
    return p
