"""Casts a sensor's rays into a world: nearest hit distance, class, instance, colour, normal.

The ground plane is intersected by every ray; each primitive only by the rays its bounding
region can reach (the sensor supplies those (ray, primitive) pairs through a `candidates`
callable). The nearest hit per ray is reduced with `np.minimum.at`, kind by kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hvdistill.synthetic.classes import albedo_table
from hvdistill.synthetic.primitives import PrimitiveSet, hull_corners, intersect, normals
from hvdistill.synthetic.world import World

# candidates(kind_index, prims) -> (ray indices (M,), primitive indices (M,))
Candidates = Callable[[int, PrimitiveSet], tuple[np.ndarray, np.ndarray]]


@dataclass
class Hits:
    t: np.ndarray  # (N,) float32 hit distance along each ray (inf = no hit)
    points: np.ndarray  # (N, 3) float32 hit points, local frame (undefined where no hit)
    cls: np.ndarray  # (N,) int16 world class, 0 = no hit
    inst: np.ndarray  # (N,) int32 instance id, 0 = stuff / no hit
    colour: np.ndarray  # (N, 3) float32 base colour in [0, 1]
    normal: np.ndarray  # (N, 3) float32 unit surface normal, local frame

    @property
    def hit(self) -> np.ndarray:
        return np.isfinite(self.t)


def cast(world: World, origin: np.ndarray, dirs: np.ndarray, candidates: Candidates, max_t: float) -> Hits:
    """Nearest hit of rays `dirs` (N, 3) float32 from `origin` (3,), local frame."""
    origin = np.asarray(origin, dtype=np.float64)
    n = len(dirs)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2], np.inf).astype(np.float32)
    best = np.where(t_ground <= max_t, t_ground, np.inf).astype(np.float32)  # (N,)
    kind = np.full(n, -1, dtype=np.int8)  # -1 = ground
    prim = np.full(n, -1, dtype=np.int64)
    o32 = origin.astype(np.float32)
    for k, prims in enumerate(world.prims):
        if not len(prims):
            continue
        ray, idx = candidates(k, prims)
        if not len(ray):
            continue
        t = intersect(prims, o32, dirs[ray], idx)  # (M,)
        keep = t < best[ray]
        ray, idx, t = ray[keep], idx[keep], t[keep]
        np.minimum.at(best, ray, t)
        won = t == best[ray]
        kind[ray[won]] = k
        prim[ray[won]] = idx[won]
    return _attributes(world, origin, dirs, best, kind, prim)


def _attributes(world: World, origin, dirs, best, kind, prim) -> Hits:
    n = len(dirs)
    hit = np.isfinite(best)
    pts = (origin[None, :] + np.where(hit, best, 0)[:, None] * dirs).astype(np.float32)  # (N, 3)
    cls = np.zeros(n, dtype=np.int16)
    inst = np.zeros(n, dtype=np.int32)
    colour = np.zeros((n, 3), dtype=np.float32)
    normal = np.zeros((n, 3), dtype=np.float32)
    ground = hit & (kind == -1)
    cls[ground] = world.road.ground_class(pts[ground, 0], pts[ground, 1])
    colour[ground] = albedo_table()[cls[ground]]
    normal[ground] = (0.0, 0.0, 1.0)
    for k, prims in enumerate(world.prims):
        sel = np.flatnonzero(hit & (kind == k))
        if not len(sel):
            continue
        idx = prim[sel]
        cls[sel] = prims.cls[idx]
        inst[sel] = prims.inst[idx]
        colour[sel] = prims.color[idx]
        normal[sel] = normals(prims, idx, pts[sel])
    return Hits(best, pts, cls, inst, colour, normal)


def corner_cache(world: World) -> list[np.ndarray]:
    """Per primitive kind: (P, 8, 3) corners of boxes enclosing the primitives."""
    return [hull_corners(p) for p in world.prims]
