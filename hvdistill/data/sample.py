"""The typed sample every data path yields: raw readers, the synthetic world, and shards.

A `Sample` is one LiDAR sweep with its cameras and calibration. Readers of raw datasets
(`hvdistill/data/sources/`) produce it with full-resolution images and no pairs/superpixels;
`sharding/` adds those (and resizes images to the stored resolution) and the shard reader
(`hvdistill/data/shards.py`) yields the same type back. Geometry is float64; points float32.

Frames: points are in the LiDAR frame at the LiDAR timestamp. For each camera,
`lidar_to_camera()` composes lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera, which is
exactly the chain nuscenes-devkit uses in `map_pointcloud_to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvdistill.geometry.transforms import invert_transform


@dataclass
class CameraFrame:
    """One camera image and its calibration."""

    name: str  # e.g. CAM_FRONT, or image_2 for SemanticKITTI
    image: np.ndarray  # (H, W, 3) uint8 RGB
    intrinsics: np.ndarray  # (3, 3) float64, pixel coordinates of `image`
    cam_to_ego: np.ndarray  # (4, 4) float64, camera -> ego at the camera timestamp
    ego_to_global: np.ndarray  # (4, 4) float64, ego pose at the camera timestamp
    timestamp: int = 0  # microseconds
    token: str = ""  # nuScenes sample_data token / file stem
    superpixels: np.ndarray | None = None  # (H, W) int16 SLIC ids, -1 = none

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stored image."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass
class Sample:
    """One LiDAR sweep, its cameras, optional labels, optional precomputed pairs."""

    key: str  # nuScenes sample token; SemanticKITTI "SEQ_FRAME"; Argoverse 2 "<log id>_<t_ns>"
    dataset: str  # "nuscenes" | "semantickitti" | "argoverse2"
    points: np.ndarray  # (N, 4) float32: x, y, z, intensity in the LiDAR frame
    lidar_to_ego: np.ndarray  # (4, 4) float64
    ego_to_global: np.ndarray  # (4, 4) float64, ego pose at the LiDAR timestamp
    cameras: list[CameraFrame]
    labels: np.ndarray | None = None  # (N,) uint8, already mapped to training classes
    timestamp: int = 0  # microseconds
    pairs: np.ndarray | None = None  # (M, 5) float32: point idx, cam idx, row v, col u, depth
    meta: dict[str, Any] = field(default_factory=dict)  # tokens, scene, label map name, ...

    def lidar_to_camera(self, cam: int) -> np.ndarray:
        """(4, 4) float64: LiDAR frame (t_lidar) -> camera frame (t_cam) via the global frame."""
        c = self.cameras[cam]
        lidar_to_global = self.ego_to_global @ self.lidar_to_ego
        global_to_cam = invert_transform(c.cam_to_ego) @ invert_transform(c.ego_to_global)
        return global_to_cam @ lidar_to_global

    def camera_to_lidar(self, cam: int) -> np.ndarray:
        """(4, 4) float64 inverse of `lidar_to_camera`."""
        return invert_transform(self.lidar_to_camera(cam))
