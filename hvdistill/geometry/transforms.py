"""Rigid transforms and quaternions (nuScenes convention: q = (w, x, y, z), Hamilton).

All functions take numpy arrays and return float64 numpy arrays, except `apply_transform`,
which also accepts torch tensors and keeps their type and dtype.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def quaternion_to_rotation(q: np.ndarray | list[float]) -> np.ndarray:
    """(4,) w, x, y, z -> (3, 3) rotation; the quaternion is normalised first."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (4,) w, x, y, z with w >= 0 (Shepperd's method, stable)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def yaw_rotation(yaw: float) -> np.ndarray:
    """(3, 3) rotation by `yaw` radians about +z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_transform(rotation: np.ndarray | list[float], translation: np.ndarray | list[float]) -> np.ndarray:
    """(4, 4) from a (3, 3) rotation or a (4,) w, x, y, z quaternion, and a (3,) translation."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (4,):
        r = quaternion_to_rotation(r)
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = np.asarray(translation, dtype=np.float64)
    return t


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid (or rigid + uniform scale/flip) transform, exact for rigid."""
    t = np.asarray(transform, dtype=np.float64)
    r = t[:3, :3]
    if np.allclose(r @ r.T, np.eye(3), atol=1e-9):
        out = np.eye(4)
        out[:3, :3] = r.T
        out[:3, 3] = -r.T @ t[:3, 3]
        return out
    return np.linalg.inv(t)


def apply_transform(transform: ArrayT, points: ArrayT) -> ArrayT:
    """(4, 4) x (N, 3) -> (N, 3). Works for numpy and torch (the transform is cast to points)."""
    if isinstance(points, torch.Tensor):
        t = torch.as_tensor(transform, dtype=points.dtype, device=points.device)
        return points @ t[:3, :3].T + t[:3, 3]
    t = np.asarray(transform)
    return points @ t[:3, :3].T.astype(points.dtype, copy=False) + t[:3, 3].astype(points.dtype, copy=False)
