"""A nuScenes-like 6-camera rig with random crops and LiDAR augmentations, for lift tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hvdistill.geometry.augmentation import image_augmentation_matrix, lidar_augmentation_matrix
from hvdistill.geometry.transforms import yaw_rotation

CAMERA_YAWS_DEG = (0.0, -55.0, -110.0, 180.0, 110.0, 55.0)
CAM_TO_LIDAR_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # x right, y down, z fwd


def make_rig(
    batch_size: int, crop: tuple[int, int], seed: int, augment: bool = True
) -> dict[str, torch.Tensor]:
    """Per-image geometry of `batch_size` samples x 6 cameras (stored images 800x450)."""
    rng = np.random.default_rng(seed)
    crop_h, crop_w = crop
    k = np.array([[633.0, 0.0, 400.0], [0.0, 633.0, 225.0], [0.0, 0.0, 1.0]])
    out = {key: [] for key in ("intrinsics", "camera_to_lidar", "image_aug", "lidar_aug", "image_batch")}
    for b in range(batch_size):
        lidar_aug = (
            lidar_augmentation_matrix(
                yaw=rng.uniform(-math.pi / 8, math.pi / 8),
                scale=rng.uniform(0.9, 1.1),
                translation=tuple(rng.normal(0.0, 0.5, 3)),
                flip_x=bool(rng.random() < 0.5),
                flip_y=bool(rng.random() < 0.5),
            )
            if augment
            else np.eye(4)
        )
        for yaw in CAMERA_YAWS_DEG:
            c2l = np.eye(4)
            c2l[:3, :3] = yaw_rotation(math.radians(yaw)) @ CAM_TO_LIDAR_AXES
            c2l[:3, 3] = [1.0 * math.cos(math.radians(yaw)), 1.0 * math.sin(math.radians(yaw)), -0.3]
            w = rng.uniform(0.55, 1.0) * min(800.0, 450.0 * crop_w / crop_h)
            h = w * crop_h / crop_w
            box = (rng.uniform(0, 800 - w), rng.uniform(0, 450 - h), w, h) if augment else (0, 0, 800, 450)
            aug = image_augmentation_matrix(box, (crop_w, crop_h), flip=bool(augment and rng.random() < 0.5))
            for key, value in (
                ("intrinsics", k),
                ("camera_to_lidar", c2l),
                ("image_aug", aug),
                ("lidar_aug", lidar_aug),
            ):
                out[key].append(torch.from_numpy(np.asarray(value, dtype=np.float64)))
            out["image_batch"].append(torch.tensor(b))
    return {key: torch.stack(v) for key, v in out.items()}


@pytest.fixture
def rig():
    return make_rig
