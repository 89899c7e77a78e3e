"""Projection with nuscenes-devkit's rules: known answers and the filter's edges."""

import numpy as np

from hvdistill.geometry.projection import lidar_to_camera_matrix, project_points
from hvdistill.geometry.transforms import make_transform, yaw_rotation

K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])


def test_known_answer_identity_camera():
    pts = np.array([[0.0, 0.0, 10.0], [0.4, 0.5, 2.0], [0.0, 0.0, 0.5], [100.0, 0.0, 1.5]])
    proj = project_points(pts, np.eye(4), K, width=100, height=80)
    assert proj.index.tolist() == [0, 1]  # depth 0.5 <= 1 dropped; u = 6717 outside
    np.testing.assert_allclose(proj.uv[0], [50.0, 40.0])
    np.testing.assert_allclose(proj.uv[1], [50.0 + 100 * 0.2, 40.0 + 100 * 0.25])
    np.testing.assert_allclose(proj.depth, [10.0, 2.0])


def test_border_rule_is_strict_like_the_devkit():
    # u exactly 1 or W - 1 is dropped (devkit: points[0] > 1 and points[0] < W - 1)
    z = 10.0
    u_vals = np.array([1.0, 1.0001, 98.9999, 99.0])
    pts = np.stack([(u_vals - 50.0) * z / 100.0, np.zeros(4), np.full(4, z)], axis=1)
    proj = project_points(pts, np.eye(4), K, width=100, height=80)
    assert proj.index.tolist() == [1, 2]
    depth_edge = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0 + 1e-9]])
    assert project_points(depth_edge, np.eye(4), K, 100, 80).index.tolist() == [1]


def test_chain_through_global_frame_with_ego_motion():
    """A point fixed in the world projects where it should after the ego moved."""
    lidar_to_ego = make_transform(yaw_rotation(0.1), [0.9, 0.0, 1.8])
    ego_lidar = make_transform(yaw_rotation(0.3), [100.0, 50.0, 0.0])
    ego_cam = make_transform(yaw_rotation(0.31), [100.4, 50.1, 0.0])  # moved in between
    # camera looks along ego +x: camera z = ego x, camera x = -ego y, camera y = -ego z
    r = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam_to_ego = make_transform(r, [1.5, 0.0, 1.5])
    t = lidar_to_camera_matrix(lidar_to_ego, ego_lidar, ego_cam, cam_to_ego)
    world = np.array([[120.0, 58.0, 1.0]])
    in_lidar = (np.linalg.inv(ego_lidar @ lidar_to_ego) @ np.append(world[0], 1.0))[:3]
    in_cam = (np.linalg.inv(ego_cam @ cam_to_ego) @ np.append(world[0], 1.0))[:3]
    proj = project_points(in_lidar[None], t, K, 10_000, 10_000)
    assert proj.index.tolist() == [0]
    np.testing.assert_allclose(proj.depth[0], in_cam[2], atol=1e-9)
    np.testing.assert_allclose(proj.uv[0], (K @ in_cam)[:2] / in_cam[2], atol=1e-9)
