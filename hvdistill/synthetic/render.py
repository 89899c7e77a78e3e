"""Appearance of hits: camera shading (albedo, texture, markings, windows, sun, haze, sky, noise),
LiDAR intensity (reflectivity, incidence angle, bright lane markings, dark glass), and the
camera-frame surface normals of a camera's hits (the normal side output).

Both sensors read the same surface detail (`surface_detail`), so what the images show
correlates with what the points are, down to lane markings being bright in both.
"""

from __future__ import annotations

import numpy as np

from hvdistill.synthetic.classes import class_id, reflectivity_table, texture_table
from hvdistill.synthetic.raycast import Hits
from hvdistill.synthetic.world import LANE_WIDTH, World

MARKING_HALF_WIDTH = 0.08  # metres
DASH_PERIOD, DASH_LENGTH = 6.0, 3.0  # centre-line dashes (metres)
WINDOW_PITCH = (3.0, 3.2)  # building window grid: horizontal, vertical (metres)
SKY_HORIZON = np.array([0.80, 0.86, 0.93], np.float32)
SKY_ZENITH = np.array([0.33, 0.52, 0.85], np.float32)
HAZE_DISTANCE = 350.0  # metres; haze weight 1 - exp(-distance / HAZE_DISTANCE)
AMBIENT, DIFFUSE = 0.45, 0.6


def hash_noise(points: np.ndarray, scale: float) -> np.ndarray:
    """(N,) float32 in [0, 1): value noise constant on cells of size 1 / scale."""
    ip = np.floor(points * scale).astype(np.int64)  # (N, 3)
    h = (ip[:, 0] * 73856093) ^ (ip[:, 1] * 19349663) ^ (ip[:, 2] * 83492791)
    h = (h * 2654435761) & 0xFFFF
    return (h.astype(np.float32) / 65536.0).astype(np.float32)


def surface_detail(world: World, hits: Hits) -> tuple[np.ndarray, np.ndarray]:
    """(N,) lane-marking mask and (N,) window mask of the hits."""
    p, cls = hits.points, hits.cls
    road = cls == class_id("road")
    d = world.road.lateral(p[:, 0], p[:, 1])
    centre = (np.abs(d) < MARKING_HALF_WIDTH) & (np.mod(p[:, 0], DASH_PERIOD) < DASH_LENGTH)
    edge = np.abs(np.abs(d) - LANE_WIDTH) < MARKING_HALF_WIDTH
    marking = road & (centre | edge)
    n = hits.normal
    facade = (cls == class_id("building")) & (np.abs(n[:, 2]) < 0.5)
    along = p[:, 0] * -n[:, 1] + p[:, 1] * n[:, 0]
    fu = np.mod(along / WINDOW_PITCH[0], 1.0)
    fv = np.mod(p[:, 2] / WINDOW_PITCH[1], 1.0)
    window = facade & (fu > 0.25) & (fu < 0.75) & (fv > 0.35) & (fv < 0.8) & (p[:, 2] > 1.0)
    return marking, window


def lidar_intensity(
    world: World, hits: Hits, dirs: np.ndarray, rng: np.random.Generator, noise: float
) -> np.ndarray:
    """(N,) float32 intensity in [0, 255] (nuScenes scale) of hits along unit `dirs`."""
    marking, window = surface_detail(world, hits)
    refl = reflectivity_table()[hits.cls]
    refl = np.where(marking, 0.9, np.where(window, 0.05, refl))
    cos = np.abs((hits.normal * dirs).sum(axis=1))
    value = 255.0 * refl * (0.3 + 0.7 * cos) * (1.0 + noise * rng.standard_normal(len(refl)))
    return np.clip(value, 0.0, 255.0).astype(np.float32)


def shade(
    world: World, hits: Hits, dirs: np.ndarray, rng: np.random.Generator, noise_std: float
) -> np.ndarray:
    """(N, 3) uint8 RGB of camera rays `dirs` (N, 3) (local frame) with their hits."""
    marking, window = surface_detail(world, hits)
    amp = texture_table()[hits.cls][:, None]
    tex = 0.6 * hash_noise(hits.points, 4.0) + 0.4 * hash_noise(hits.points, 0.7)
    colour = hits.colour * (1.0 + amp * (tex[:, None] - 0.5))
    colour[marking] = (0.92, 0.92, 0.88)
    colour[window] = (0.22, 0.28, 0.36)
    n = hits.normal
    n = np.where(((n * dirs).sum(axis=1) > 0)[:, None], -n, n)
    lambert = np.clip(n @ world.sun.astype(np.float32), 0.0, 1.0)
    colour = colour * (AMBIENT + DIFFUSE * lambert)[:, None]
    length = np.linalg.norm(dirs, axis=1)
    hit = hits.hit
    dist = np.where(hit, hits.t, 0.0) * length
    haze = (1.0 - np.exp(-dist / HAZE_DISTANCE))[:, None]
    elevation = np.clip(dirs[:, 2] / length, 0.0, 1.0)[:, None]
    sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(elevation)
    colour = np.where(hit[:, None], colour * (1 - haze) + SKY_HORIZON * haze, sky)
    colour = colour * 255.0 + noise_std * rng.standard_normal(colour.shape).astype(np.float32)
    return np.clip(colour, 0, 255).astype(np.uint8)


def camera_normals(hits: Hits, dirs: np.ndarray, local_to_cam: np.ndarray) -> np.ndarray:
    """(N, 3) float32 unit normals of the hits in the camera frame, facing the camera; 0 = no hit.

    `dirs` (N, 3) are the rays in the local frame, `local_to_cam` (3, 3) the rotation from the
    local frame to the camera frame (x right, y down, z forward).
    """
    n = hits.normal  # (N, 3) local frame, outward
    n = np.where(((n * dirs).sum(axis=1) > 0)[:, None], -n, n)  # seen from the camera's side
    cam = n @ np.asarray(local_to_cam, dtype=np.float32).T  # (N, 3)
    return np.where(hits.hit[:, None], cam, 0.0).astype(np.float32)
