"""The sensor rig: a nuScenes-like spinning LiDAR and six pinhole cameras, with their rays.

Calibration follows nuScenes (values close to the real vehicle's): LIDAR_TOP 1.84 m above the
ego origin and rotated about -90 degrees in yaw, so the LiDAR frame differs from the ego frame;
cameras with the nuScenes layout and the devkit's camera frame (x right, y down, z forward),
intrinsics scaled from 1600x900 to the configured resolution, CAM_BACK with a wider field of
view. Each sensor's rays form a 2D grid (beams x azimuths, rows x columns); `candidates`
returns, for a set of bounding spheres, the (ray, primitive) pairs whose rays can reach each
sphere, so the ray caster tests only those.

Pixel convention (the project's, docs/geometry.md): integer coordinates are pixel centres, so
pixel (row r, column c) covers u in [c - 0.5, c + 0.5), v in [r - 0.5, r + 0.5) and its ray
goes through (c, r). A projected point (u, v) lies in pixel (floor(v + 0.5), floor(u + 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdistill.config import NUSCENES_CAMERAS, SynthConfig
from hvdistill.geometry.transforms import make_transform, yaw_rotation

LIDAR_TRANSLATION = (0.943, 0.0, 1.84)  # nuScenes LIDAR_TOP, metres in the ego frame
LIDAR_YAW_DEG = -89.6
# camera -> ego axes for a camera looking along ego +x: x right = -y_ego, y down = -z_ego, z = x_ego
CAMERA_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
# name: (yaw deg, translation in the ego frame, fx at 1600x900, cx, cy at 1600x900)
CAMERA_LAYOUT: dict[str, tuple[float, tuple[float, float, float], float, float, float]] = {
    "CAM_FRONT": (0.0, (1.70, 0.016, 1.51), 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.49), 1260.8, 807.9, 495.3),
    "CAM_BACK_RIGHT": (-110.0, (1.04, -0.48, 1.59), 1256.7, 817.8, 451.9),
    "CAM_BACK": (180.0, (0.03, 0.00, 1.58), 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": (110.0, (1.05, 0.48, 1.56), 1256.7, 792.1, 492.8),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1272.6, 826.6, 479.8),
}
CAMERA_NEAR = 0.05  # metres; spheres reaching closer than this fall back to the whole image


@dataclass
class Camera:
    name: str
    intrinsics: np.ndarray  # (3, 3)
    cam_to_ego: np.ndarray  # (4, 4)
    width: int
    height: int
    rays_cam: np.ndarray  # (H*W, 3) float32 directions with z = 1 (t = camera depth)


@dataclass
class Lidar:
    lidar_to_ego: np.ndarray  # (4, 4)
    elevations: np.ndarray  # (B,) radians, descending (row 0 = top beam)
    azimuths: int  # columns per sweep


def build_lidar(cfg: SynthConfig) -> Lidar:
    elev = np.deg2rad(np.linspace(cfg.lidar_fov_up_deg, cfg.lidar_fov_down_deg, cfg.lidar_beams))
    return Lidar(
        make_transform(yaw_rotation(np.deg2rad(LIDAR_YAW_DEG)), LIDAR_TRANSLATION),
        elev,
        cfg.lidar_points_per_beam,
    )


def build_camera(name: str, width: int, height: int) -> Camera:
    yaw, translation, f, cx, cy = CAMERA_LAYOUT[name]
    sx, sy = width / 1600.0, height / 900.0
    k = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
    rotation = yaw_rotation(np.deg2rad(yaw)) @ CAMERA_BASE
    u, v = np.meshgrid(
        np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    )  # (H, W) centres
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    return Camera(
        name, k, make_transform(rotation, translation), width, height, rays.reshape(-1, 3).astype(np.float32)
    )


def build_cameras(cfg: SynthConfig, names: tuple[str, ...] = NUSCENES_CAMERAS) -> list[Camera]:
    return [build_camera(n, cfg.image_width, cfg.image_height) for n in names]


def lidar_rays(lidar: Lidar, azimuth0: float) -> tuple[np.ndarray, np.ndarray]:
    """(B*A, 3) float32 unit directions in the LiDAR frame (row-major beams x azimuths), (A,) azimuths."""
    az = azimuth0 + 2 * np.pi * np.arange(lidar.azimuths) / lidar.azimuths
    ce, se = np.cos(lidar.elevations)[:, None], np.sin(lidar.elevations)[:, None]
    dirs = np.stack([ce * np.cos(az), ce * np.sin(az), np.broadcast_to(se, (len(se), len(az)))], axis=-1)
    return dirs.reshape(-1, 3).astype(np.float32), az


def rect_pairs(r0, r1, c0, c1, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ray indices (row-major, columns wrapping mod n_cols) and primitive ids of rectangles."""
    rows, cols = np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)
    counts = rows * cols  # (P,)
    total = int(counts.sum())
    prim = np.repeat(np.arange(len(counts)), counts)  # (M,)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    w = np.repeat(cols, counts)
    row = np.repeat(r0, counts) + local // w
    col = (np.repeat(c0, counts) + local % w) % n_cols
    return row * n_cols + col, prim


def lidar_candidates(
    lidar: Lidar,
    azimuth0: float,
    to_sensor: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    max_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(ray, primitive) pairs of the LiDAR grid whose rays can reach each bounding sphere."""
    v = centres @ to_sensor[:3, :3].T + to_sensor[:3, 3]  # (P, 3) sphere centres, LiDAR frame
    dist, dxy = np.linalg.norm(v, axis=1), np.hypot(v[:, 0], v[:, 1])
    inside = dist <= radii
    half = np.arcsin(np.clip(radii / np.maximum(dist, 1e-6), 0, 1))
    el = np.arctan2(v[:, 2], dxy)
    elev = lidar.elevations  # descending
    r0 = np.searchsorted(-elev, -(el + half), side="left")
    r1 = np.searchsorted(-elev, -(el - half), side="right")
    step = 2 * np.pi / lidar.azimuths
    az_half = np.where(dxy > radii, np.arcsin(np.clip(radii / np.maximum(dxy, 1e-6), 0, 1)), np.pi)
    az = np.arctan2(v[:, 1], v[:, 0])
    c0 = np.ceil((az - az_half - azimuth0) / step).astype(np.int64)
    c1 = np.floor((az + az_half - azimuth0) / step).astype(np.int64) + 1
    c1 = np.minimum(c1, c0 + lidar.azimuths)
    r0, r1 = np.where(inside, 0, r0), np.where(inside, len(elev), r1)
    c0, c1 = (
        np.where(inside | (az_half >= np.pi), 0, c0),
        np.where(inside | (az_half >= np.pi), lidar.azimuths, c1),
    )
    far = dist - radii > max_range
    r1 = np.where(far, r0, r1)
    return rect_pairs(r0, r1, c0, c1, lidar.azimuths)


_EDGES = np.array([(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit])  # (12, 2)


def pixel_bounds(cam: Camera, pts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel rectangle (r0, r1, c0, c1) bounding convex hulls of (P, 8, 3) camera-frame corners.

    Exact for the part in front of the near plane: corners in front plus the points where the
    hull's edges cross the near plane. Hulls entirely behind get an empty rectangle.
    """
    z = pts[..., 2]
    p0, p1 = pts[:, _EDGES[:, 0]], pts[:, _EDGES[:, 1]]  # (P, 12, 3)
    z0, z1 = p0[..., 2], p1[..., 2]
    crossing = (z0 > CAMERA_NEAR) != (z1 > CAMERA_NEAR)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(crossing, (CAMERA_NEAR - z0) / (z1 - z0), 0.0)
    cut = p0 + alpha[..., None] * (p1 - p0)
    cut[..., 2] = CAMERA_NEAR
    allp = np.concatenate([pts, cut], axis=1)  # (P, 20, 3)
    valid = np.concatenate([z > CAMERA_NEAR, crossing], axis=1)  # (P, 20)
    zs = np.maximum(allp[..., 2], CAMERA_NEAR)
    k = cam.intrinsics
    u = k[0, 0] * allp[..., 0] / zs + k[0, 2]
    v = k[1, 1] * allp[..., 1] / zs + k[1, 2]
    big = 1e9
    umin, umax = np.where(valid, u, big).min(1), np.where(valid, u, -big).max(1)
    vmin, vmax = np.where(valid, v, big).min(1), np.where(valid, v, -big).max(1)
    # pixel c's ray passes through u = c (pixel centres at integers): keep umin <= c <= umax
    c0 = np.ceil(np.clip(umin, -1, cam.width + 1)).clip(0, cam.width).astype(np.int64)
    c1 = (np.floor(np.clip(umax, -1, cam.width + 1)) + 1).clip(0, cam.width).astype(np.int64)
    r0 = np.ceil(np.clip(vmin, -1, cam.height + 1)).clip(0, cam.height).astype(np.int64)
    r1 = (np.floor(np.clip(vmax, -1, cam.height + 1)) + 1).clip(0, cam.height).astype(np.int64)
    return r0, r1, c0, c1


def camera_candidates(
    cam: Camera, to_cam: np.ndarray, corners: np.ndarray, max_range: float
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, primitive) pairs whose pixel rays can reach the primitives with hull `corners`.

    `corners` (P, 8, 3), local frame: any 8 points whose convex hull contains the primitive.
    """
    pts = corners @ to_cam[:3, :3].T + to_cam[:3, 3]  # (P, 8, 3) camera frame
    r0, r1, c0, c1 = pixel_bounds(cam, pts)
    far = np.linalg.norm(pts, axis=2).min(axis=1) > max_range
    r1 = np.where(far, r0, r1)
    return rect_pairs(r0, r1, c0, c1, cam.width)
