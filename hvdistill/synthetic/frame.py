"""One synthetic frame: a LiDAR sweep and its camera images, with every pose and calibration.

`generate_frame` casts the LiDAR rays at the sweep time and each camera's rays at its own,
later, firing time (the ego moves in between), so the full chain
lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera is needed to relate them. Besides the
RGB image, every camera yields a per-pixel world-class map, a camera-depth map (z in
metres, 0 where the ray hits nothing) and a camera-frame surface-normal map: the side outputs
the writers can store.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from hvdistill.config import SynthConfig
from hvdistill.geometry.transforms import invert_transform
from hvdistill.synthetic.layout import build_world
from hvdistill.synthetic.raycast import cast, corner_cache
from hvdistill.synthetic.render import camera_normals, lidar_intensity, shade
from hvdistill.synthetic.sensors import (
    Camera,
    Lidar,
    build_cameras,
    build_lidar,
    camera_candidates,
    lidar_candidates,
    lidar_rays,
)
from hvdistill.synthetic.world import World

LIDAR_MIN_RANGE = 1.0  # metres; closer returns (the ego's own body) are discarded
CAMERA_MAX_DEPTH = 250.0  # metres; rays are cast this far


@dataclass
class CameraImage:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    classes: np.ndarray  # (H, W) uint8 world class id, 0 = sky
    depth: np.ndarray  # (H, W) float32 camera z in metres, 0 = no hit
    normals: np.ndarray  # (H, W, 3) float32 unit camera-frame normal facing the camera, 0 = no hit
    intrinsics: np.ndarray  # (3, 3)
    cam_to_ego: np.ndarray  # (4, 4)
    ego_to_global: np.ndarray  # (4, 4) at the camera's time
    time_s: float  # seconds after the scene start


@dataclass
class Frame:
    points: np.ndarray  # (N, 5) float32: x, y, z, intensity (0-255), ring, LiDAR frame
    classes: np.ndarray  # (N,) int16 world class id per point
    instances: np.ndarray  # (N,) int32 instance id per point, 0 = stuff
    lidar_to_ego: np.ndarray  # (4, 4)
    ego_to_global: np.ndarray  # (4, 4) at the LiDAR time
    time_s: float
    cameras: list[CameraImage] = field(default_factory=list)


@dataclass
class Rig:
    lidar: Lidar
    cameras: list[Camera]


def build_rig(cfg: SynthConfig, camera_names: tuple[str, ...] | None = None) -> Rig:
    cams = build_cameras(cfg) if camera_names is None else build_cameras(cfg, camera_names)
    return Rig(build_lidar(cfg), cams)


def frame_rng(cfg: SynthConfig, scene_index: int, frame_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, scene_index, frame_index, 1]))


def sweep(world: World, lidar: Lidar, t: float, cfg: SynthConfig, rng: np.random.Generator):
    """(points (N, 5), classes (N,), instances (N,)) of one LiDAR sweep at time t."""
    azimuth0 = float(rng.uniform(0, 2 * np.pi))
    dirs, _ = lidar_rays(lidar, azimuth0)  # (R, 3) LiDAR frame
    to_local = world.ego_local(t) @ lidar.lidar_to_ego
    to_sensor = invert_transform(to_local)
    dirs_local = (dirs @ to_local[:3, :3].T).astype(np.float32)
    spheres = [p.bounding_spheres() for p in world.prims]

    def candidates(k, prims):
        return lidar_candidates(lidar, azimuth0, to_sensor, spheres[k][0], spheres[k][1], cfg.lidar_max_range)

    hits = cast(world, to_local[:3, 3], dirs_local, candidates, cfg.lidar_max_range)
    keep = hits.hit & (hits.t >= LIDAR_MIN_RANGE) & (rng.random(len(dirs)) >= cfg.lidar_dropout)
    intensity = lidar_intensity(world, hits, dirs_local, rng, cfg.lidar_intensity_noise)
    rng_noise = cfg.lidar_range_noise * rng.standard_normal(len(dirs)).astype(np.float32)
    ranges = hits.t + rng_noise
    ring = np.repeat(np.arange(len(lidar.elevations)), lidar.azimuths).astype(np.float32)
    xyz = dirs * ranges[:, None]
    pts = np.concatenate([xyz, intensity[:, None], ring[:, None]], axis=1)[keep].astype(np.float32)
    return pts, hits.cls[keep], hits.inst[keep]


def render_camera(
    world: World, cam: Camera, t: float, cfg: SynthConfig, rng: np.random.Generator, corners: list
) -> CameraImage:
    """Ray-cast one camera at time t: RGB, world-class map, depth map, normal map."""
    to_local = world.ego_local(t) @ cam.cam_to_ego
    to_cam = invert_transform(to_local)
    dirs = (cam.rays_cam @ to_local[:3, :3].T.astype(np.float32)).astype(np.float32)  # (H*W, 3)

    def candidates(k, prims):
        return camera_candidates(cam, to_cam, corners[k], CAMERA_MAX_DEPTH)

    hits = cast(world, to_local[:3, 3], dirs, candidates, CAMERA_MAX_DEPTH)
    rgb = shade(world, hits, dirs, rng, cfg.image_noise_std)
    h, w = cam.height, cam.width
    depth = np.where(hits.hit, hits.t, 0.0).astype(np.float32)  # rays have camera z = 1
    return CameraImage(
        cam.name,
        rgb.reshape(h, w, 3),
        hits.cls.astype(np.uint8).reshape(h, w),
        depth.reshape(h, w),
        camera_normals(hits, dirs, to_cam[:3, :3]).reshape(h, w, 3),
        cam.intrinsics,
        cam.cam_to_ego,
        world.local_to_global @ world.ego_local(t),
        t,
    )


def camera_times(cfg: SynthConfig, t_lidar: float, n: int) -> list[float]:
    return [t_lidar + cfg.camera_delay_s + i * cfg.camera_stagger_s for i in range(n)]


def generate_frame(
    cfg: SynthConfig,
    scene_index: int = 0,
    frame_index: int = 0,
    world: World | None = None,
    rig: Rig | None = None,
    camera_times_s: list[float] | None = None,
) -> Frame:
    """Frame `frame_index` of scene `scene_index` (deterministic in cfg.seed and both indices).

    `world`/`rig` may be passed to reuse them across frames; `camera_times_s` overrides the
    cameras' firing times (seconds after the scene start).
    """
    duration = cfg.frame_interval_s * max(cfg.frames_per_scene - 1, 0)
    world = world if world is not None else build_world(cfg, scene_index, duration)
    rig = rig if rig is not None else build_rig(cfg)
    rng = frame_rng(cfg, scene_index, frame_index)
    t = frame_index * cfg.frame_interval_s
    pts, cls, inst = sweep(world, rig.lidar, t, cfg, rng)
    times = camera_times_s if camera_times_s is not None else camera_times(cfg, t, len(rig.cameras))
    corners = corner_cache(world)
    cam_rngs = rng.spawn(len(rig.cameras))  # one stream per camera: same images in any thread order
    jobs = list(zip(rig.cameras, times, cam_rngs))
    if cfg.render_threads > 1:  # numpy releases the GIL in its array kernels
        with ThreadPoolExecutor(max_workers=cfg.render_threads) as pool:
            images = list(pool.map(lambda j: render_camera(world, j[0], j[1], cfg, j[2], corners), jobs))
    else:
        images = [render_camera(world, cam, tc, cfg, r, corners) for cam, tc, r in jobs]
    return Frame(pts, cls, inst, rig.lidar.lidar_to_ego, world.ego_pose(t), t, images)
