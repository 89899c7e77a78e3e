"""The property the published HVDistill code fails: image-lifted and LiDAR BEV cells agree.

With random LiDAR augmentation (yaw, scale, translation, flips) and random per-camera image
augmentation (random resized crop + horizontal flip) on, a LiDAR point projected into a camera,
carried through the image augmentation, and lifted back through the frustum geometry at its
true depth must land in the same BEV cell as the LiDAR BEV indexing (voxels // 4 of the
augmented cloud) puts it.

Mutations tried, each asserted below to break the property for most points, so this test
fails if either augmentation matrix is left out of the lift:
  1. lift with the identity instead of the image-augmentation matrix (the lifted frustum of
     the published code ignores the crop/flip it applied to the image);
  2. lift with the identity instead of the LiDAR augmentation matrix (the published code
     never applies the LiDAR augmentation to the lifted frustum);
  3. build the image matrix with rows and columns swapped (u <-> v), as the published code does.
"""

import numpy as np
import pytest
import torch

from hvdistill.geometry.augmentation import (
    image_augmentation_matrix,
    lidar_augmentation_matrix,
    transform_pixels,
)
from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.frustum import frustum_cells, lift_to_lidar, make_frustum
from hvdistill.geometry.projection import lidar_to_camera_matrix, project_points
from hvdistill.geometry.transforms import invert_transform, make_transform, yaw_rotation
from hvdistill.geometry.voxel import voxelize

RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
GRID = BEVGrid(-51.2, -51.2, 0.4, 256)
W, H = 800, 450  # stored image
CROP_W, CROP_H = 416, 224
CAM_YAWS = [0.0, -55.0, -110.0, 180.0, 110.0, 55.0]  # nuScenes camera layout (degrees)
SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def camera_rig(rng):
    """6 nuScenes-like cameras, a yawed LiDAR, and ego poses that differ between timestamps."""
    lidar_to_ego = make_transform(yaw_rotation(np.deg2rad(-90.5)), [0.94, 0.0, 1.84])
    ego_lidar = make_transform(yaw_rotation(0.7), [411.3, 1180.9, 0.0])
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam axes in ego
    k = np.array([[633.0, 0.0, 408.0], [0.0, 633.0, 245.0], [0.0, 0.0, 1.0]])
    cams = []
    for yaw in CAM_YAWS:
        cam_to_ego = make_transform(yaw_rotation(np.deg2rad(yaw)) @ base, [1.0, 0.0, 1.5])
        drift = rng.uniform(0.1, 0.6)  # ego moved between the LiDAR and camera timestamps
        ego_cam = make_transform(
            yaw_rotation(0.7 + rng.uniform(-0.01, 0.01)),
            [411.3 + drift * np.cos(0.7), 1180.9 + drift * np.sin(0.7), 0.0],
        )
        cams.append((k, lidar_to_camera_matrix(lidar_to_ego, ego_lidar, ego_cam, cam_to_ego)))
    return cams


def random_image_aug(rng):
    area = rng.uniform(0.3, 1.0) * W * H
    aspect = rng.uniform(14 / 9, 17 / 9)
    w = min(W, np.sqrt(area * aspect))
    h = min(H, w / aspect)
    x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
    return image_augmentation_matrix((x0, y0, w, h), (CROP_W, CROP_H), flip=bool(rng.random() < 0.5))


def random_lidar_aug(rng):
    return lidar_augmentation_matrix(
        yaw=np.deg2rad(rng.uniform(-22.5, 22.5)),
        scale=rng.uniform(0.9, 1.1),
        translation=rng.normal(0.0, 0.5, size=3),
        flip_x=bool(rng.random() < 0.5),
        flip_y=bool(rng.random() < 0.5),
    )


def lidar_bev_cells(points_aug):
    """The LiDAR side: 0.1 m voxels of the augmented cloud, cell = voxel // 4."""
    v = voxelize(points_aug, 0.1, RANGE)
    cells = np.full(len(points_aug), -1)
    cells[v.point_index] = GRID.voxel_to_flat(v.coords[v.inverse, 0], v.coords[v.inverse, 1], 4)
    return cells


def lift_cells(uv_aug, depth, k, lidar_to_cam, image_aug, lidar_aug):
    uvd = torch.from_numpy(np.concatenate([uv_aug, depth[:, None]], 1))[None]
    xyz = lift_to_lidar(
        uvd,
        torch.from_numpy(k)[None],
        torch.from_numpy(invert_transform(lidar_to_cam))[None],
        torch.from_numpy(image_aug)[None],
        torch.from_numpy(lidar_aug)[None],
    )[0]
    return GRID.flat_index(xyz[:, :2]).numpy()


@pytest.mark.parametrize("seed", range(5))
def test_lifted_points_land_in_their_lidar_bev_cell(seed):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-45, 45, (40_000, 2)), rng.uniform(-2, 2, (40_000, 1))], 1)
    lidar_aug = random_lidar_aug(rng)
    points_aug = points @ lidar_aug[:3, :3].T + lidar_aug[:3, 3]
    lidar_cells = lidar_bev_cells(points_aug)
    checked, broken = 0, {"no image aug": 0, "no lidar aug": 0, "u/v swapped": 0}
    for k, lidar_to_cam in camera_rig(rng):
        proj = project_points(points, lidar_to_cam, k, W, H)
        image_aug = random_image_aug(rng)
        uv_aug = transform_pixels(image_aug, proj.uv)
        inside = (uv_aug[:, 0] >= 0) & (uv_aug[:, 0] < CROP_W) & (uv_aug[:, 1] >= 0) & (uv_aug[:, 1] < CROP_H)
        idx, uv_aug, depth = proj.index[inside], uv_aug[inside], proj.depth[inside]
        expected = lidar_cells[idx]
        keep = expected >= 0
        got = lift_cells(uv_aug, depth, k, lidar_to_cam, image_aug, lidar_aug)
        np.testing.assert_array_equal(got[keep], expected[keep])
        checked += int(keep.sum())
        broken["no image aug"] += int(
            (lift_cells(uv_aug, depth, k, lidar_to_cam, np.eye(3), lidar_aug)[keep] != expected[keep]).sum()
        )
        broken["no lidar aug"] += int(
            (lift_cells(uv_aug, depth, k, lidar_to_cam, image_aug, np.eye(4))[keep] != expected[keep]).sum()
        )
        swapped = SWAP @ image_aug @ SWAP
        broken["u/v swapped"] += int(
            (lift_cells(uv_aug, depth, k, lidar_to_cam, swapped, lidar_aug)[keep] != expected[keep]).sum()
        )
    assert checked > 2000
    for mutation, count in broken.items():
        assert count > 0.5 * checked, f"mutation '{mutation}' went unnoticed ({count}/{checked})"


def test_frustum_points_reproject_onto_their_pixel_and_depth():
    """Every frustum point lifted by frustum_cells' geometry re-projects to its (u, v, d)."""
    rng = np.random.default_rng(7)
    (k, lidar_to_cam), image_aug, lidar_aug = camera_rig(rng)[1], random_image_aug(rng), random_lidar_aug(rng)
    frustum = make_frustum(CROP_H, CROP_W, 4, 1.0, 60.0, 0.5)  # (118, 56, 104, 3)
    assert frustum.shape == (118, 56, 104, 3)
    args = [torch.from_numpy(m)[None] for m in (k, invert_transform(lidar_to_cam), image_aug, lidar_aug)]
    xyz = lift_to_lidar(frustum[None], *args)[0].reshape(-1, 3).numpy()
    un_aug = (xyz - lidar_aug[:3, 3]) @ np.linalg.inv(lidar_aug[:3, :3]).T
    cam = un_aug @ lidar_to_cam[:3, :3].T + lidar_to_cam[:3, 3]
    uv = transform_pixels(image_aug, (cam @ k.T)[:, :2] / cam[:, 2:3])
    np.testing.assert_allclose(uv, frustum.reshape(-1, 3)[:, :2].numpy(), atol=1e-7)
    np.testing.assert_allclose(cam[:, 2], frustum.reshape(-1, 3)[:, 2].numpy(), atol=1e-9)
    cells = frustum_cells(frustum, GRID, *args, z_range=(-5.0, 3.0))[0]
    flat = GRID.flat_index(torch.from_numpy(xyz[:, :2])).reshape(cells.shape)
    in_z = torch.from_numpy((xyz[:, 2] >= -5.0) & (xyz[:, 2] < 3.0)).reshape(cells.shape)
    assert torch.equal(cells, torch.where(in_z, flat, torch.full_like(flat, -1)))
