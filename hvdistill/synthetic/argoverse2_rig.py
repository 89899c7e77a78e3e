"""The Argoverse 2 sensor rig: two stacked 32-beam LiDAR units and the seven ring cameras.

Values close to the real vehicle's (from the devkit's sample log): the ring cameras' yaw,
downward pitch, mounting point and focal length at full resolution, the front centre camera in
portrait (1550 x 2048), the six others in landscape (2048 x 1550), all scaled by
`synth.argoverse2.image_scale`. The camera frame is the devkit's (x right, y down, z forward);
images are undistorted pinhole images (AV2 ships them undistorted; k1..k3 are written as 0).

The LiDAR is two units stacked on the roof, each a spinning `Lidar` with
`synth.argoverse2.lidar_beams` beams between `lidar_fov_up_deg` and `lidar_fov_down_deg` in its
own frame: `up_lidar` upright, `down_lidar` 11.5 cm below it and mounted upside down (rolled
180 degrees about the ego x axis), so its beams cover the mirrored elevations and the two
overlap around the horizon. A sweep is both units' returns at one instant, in the ego frame,
with laser_number = beam index (0 .. B-1 up, B .. 2B-1 down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdistill.config import SynthConfig
from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
from hvdistill.config.synth import ARGOVERSE2_IMAGE_SIZE
from hvdistill.geometry.transforms import make_transform, yaw_rotation
from hvdistill.synthetic.sensors import CAMERA_BASE, Camera, Lidar

UP_LIDAR = "up_lidar"
DOWN_LIDAR = "down_lidar"
UP_LIDAR_TRANSLATION = (1.35, 0.0, 1.64)  # metres in the ego frame
DOWN_LIDAR_TRANSLATION = (1.35, 0.0, 1.525)
UPSIDE_DOWN = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
# name: (yaw deg, pitch deg (negative = looking down), translation in the ego frame, focal length
# in pixels at full resolution, (cx, cy) at full resolution, portrait)
RING_LAYOUT: dict[str, tuple[float, float, tuple[float, float, float], float, tuple[float, float], bool]] = {
    "ring_front_center": (0.0, 0.0, (1.635, 0.003, 1.398), 1776.0, (778.0, 1013.5), True),
    "ring_front_left": (45.0, -2.8, (1.546, 0.204, 1.394), 1687.5, (1031.4, 768.3), False),
    "ring_front_right": (-45.0, -3.0, (1.551, -0.199, 1.398), 1685.9, (1028.0, 766.2), False),
    "ring_side_left": (99.0, -2.8, (1.306, 0.276, 1.407), 1688.2, (1027.5, 772.0), False),
    "ring_side_right": (-99.0, -3.0, (1.306, -0.279, 1.396), 1686.8, (1022.1, 770.6), False),
    "ring_rear_left": (153.0, -0.1, (1.090, 0.126, 1.419), 1683.9, (1019.8, 775.4), False),
    "ring_rear_right": (-153.0, 0.0, (1.101, -0.127, 1.415), 1689.2, (1024.9, 766.9), False),
}


@dataclass
class Argoverse2Rig:
    """The two LiDAR units (up, down) and the ring cameras in `ARGOVERSE2_RING_CAMERAS` order."""

    units: tuple[Lidar, Lidar]
    cameras: list[Camera]


def pitch_rotation(pitch: float) -> np.ndarray:
    """(3, 3) rotation about +y that tilts the ego +x axis up by `pitch` radians (down if negative)."""
    c, s = np.cos(pitch), np.sin(pitch)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def ring_image_size(name: str, scale: float) -> tuple[int, int]:
    """(width, height) of camera `name` at `scale` of the real resolution."""
    width, height = ARGOVERSE2_IMAGE_SIZE
    if RING_LAYOUT[name][5]:
        width, height = height, width
    return max(1, round(width * scale)), max(1, round(height * scale))


def build_ring_camera(name: str, scale: float) -> Camera:
    """Ring camera `name` at `scale` (square pixels, fx = fy as in AV2), rays through pixel centres."""
    yaw, pitch, translation, focal, (cx, cy), _ = RING_LAYOUT[name]
    width, height = ring_image_size(name, scale)
    k = np.array([[focal * scale, 0.0, cx * scale], [0.0, focal * scale, cy * scale], [0.0, 0.0, 1.0]])
    rotation = yaw_rotation(np.deg2rad(yaw)) @ pitch_rotation(np.deg2rad(pitch)) @ CAMERA_BASE
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))  # (H, W)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)  # (H, W, 3)
    cam_to_ego = make_transform(rotation, translation)
    return Camera(name, k, cam_to_ego, width, height, rays.reshape(-1, 3).astype(np.float32))


def build_lidar_units(cfg: SynthConfig) -> tuple[Lidar, Lidar]:
    """(up_lidar, down_lidar): the same beam pattern, the lower unit upside down."""
    a = cfg.argoverse2
    elevations = np.deg2rad(np.linspace(a.lidar_fov_up_deg, a.lidar_fov_down_deg, a.lidar_beams))
    up = Lidar(make_transform(np.eye(3), UP_LIDAR_TRANSLATION), elevations, cfg.lidar_points_per_beam)
    down = Lidar(make_transform(UPSIDE_DOWN, DOWN_LIDAR_TRANSLATION), elevations, cfg.lidar_points_per_beam)
    return up, down


def build_argoverse2_rig(cfg: SynthConfig) -> Argoverse2Rig:
    return Argoverse2Rig(
        build_lidar_units(cfg),
        [build_ring_camera(n, cfg.argoverse2.image_scale) for n in ARGOVERSE2_RING_CAMERAS],
    )
