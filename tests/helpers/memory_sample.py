"""Builds a small prepared `Sample` in memory (two cameras, real projection) for unit tests."""

import numpy as np

from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.geometry.projection import project_points
from hvdistill.geometry.transforms import make_transform, yaw_rotation

CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera axes in ego


def make_sample(
    seed: int = 0, n_points: int = 20_000, width: int = 480, height: int = 270, block: int = 30
) -> Sample:
    """Points on a ring of walls + ground, 2 cameras (front, back), blocky superpixels, pairs."""
    rng = np.random.default_rng(seed)
    ang = rng.uniform(-np.pi, np.pi, n_points)
    rad = rng.uniform(4.0, 40.0, n_points)
    pts = np.stack(
        [rad * np.cos(ang), rad * np.sin(ang), rng.uniform(-1.8, 2.0, n_points), rng.uniform(0, 1, n_points)],
        1,
    ).astype(np.float32)
    k = np.array([[300.0, 0.0, width / 2], [0.0, 300.0, height / 2], [0.0, 0.0, 1.0]])
    ego = make_transform(yaw_rotation(0.3), [100.0, 20.0, 0.0])
    lidar_to_ego = make_transform(yaw_rotation(-0.05), [0.9, 0.0, 1.8])
    cams = []
    for i, yaw in enumerate((0.0, np.pi)):
        yy, xx = np.mgrid[0:height, 0:width]
        sp = ((yy // block) * (width // block + 1) + xx // block).astype(np.int16)
        image = np.stack(
            [(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 40 * (i + 1))], -1
        ).astype(np.uint8)
        ego_cam = make_transform(yaw_rotation(0.3), [100.2 + 0.1 * i, 20.05, 0.0])
        cams.append(
            CameraFrame(
                name=f"CAM_{i}",
                image=image,
                intrinsics=k,
                cam_to_ego=make_transform(yaw_rotation(yaw) @ CAM_AXES, [1.0, 0.0, 1.5]),
                ego_to_global=ego_cam,
                superpixels=sp,
            )
        )
    sample = Sample(
        key=f"s{seed}",
        dataset="nuscenes",
        points=pts,
        lidar_to_ego=lidar_to_ego,
        ego_to_global=ego,
        cameras=cams,
        labels=rng.integers(0, 17, n_points).astype(np.uint8),
    )
    rows = []
    for i in range(len(cams)):
        p = project_points(pts[:, :3], sample.lidar_to_camera(i), k, width, height)
        rows.append(np.stack([p.index, np.full(len(p.index), i), p.uv[:, 1], p.uv[:, 0], p.depth], 1))
    sample.pairs = np.concatenate(rows, 0).astype(np.float32)
    return sample
