"""Rigid transforms and quaternions: known answers and round trips."""

import numpy as np
import torch

from hvdistill.geometry.transforms import (
    apply_transform,
    invert_transform,
    make_transform,
    quaternion_to_rotation,
    rotation_to_quaternion,
    yaw_rotation,
)


def random_quaternion(rng):
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def test_quaternion_known_answer_yaw_90():
    q = [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]  # 90 deg about z
    r = quaternion_to_rotation(q)
    np.testing.assert_allclose(r @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(r, yaw_rotation(np.pi / 2), atol=1e-12)


def test_quaternion_round_trip_and_orthonormal():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = random_quaternion(rng)
        r = quaternion_to_rotation(q)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(r), 1.0)
        q2 = rotation_to_quaternion(r)
        assert np.allclose(q2, q, atol=1e-10) or np.allclose(q2, -q, atol=1e-10)


def test_transform_inverse_round_trip_numpy_and_torch():
    rng = np.random.default_rng(1)
    t = make_transform(random_quaternion(rng), rng.normal(size=3) * 10)
    np.testing.assert_allclose(invert_transform(t) @ t, np.eye(4), atol=1e-12)
    pts = rng.normal(size=(50, 3)) * 20
    back = apply_transform(invert_transform(t), apply_transform(t, pts))
    np.testing.assert_allclose(back, pts, atol=1e-10)
    pts_t = torch.from_numpy(pts)
    np.testing.assert_allclose(apply_transform(t, pts_t).numpy(), apply_transform(t, pts), atol=1e-12)


def test_invert_non_rigid_falls_back_to_general_inverse():
    t = np.diag([2.0, 2.0, 2.0, 1.0])
    t[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(invert_transform(t) @ t, np.eye(4), atol=1e-12)
