"""Analytic primitives of the synthetic world and their ray intersections.

Three kinds, each stored as arrays (one row per primitive), all in the world's local frame
(z up, ground at z = 0): yawed boxes, vertical cylinders and axis-aligned ellipsoids. Every
primitive carries a world class id, an instance id (0 for stuff) and an RGB colour. The
intersection functions take one ray origin shared by all rays (a sensor centre) and per-pair
directions and primitive indices, and return the hit distance per pair (inf for a miss), so
the caller can test only the rays that a primitive's bounding sphere can reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-4  # hits closer than this to the origin (metres) are ignored


@dataclass
class PrimitiveSet:
    """One kind of primitive as arrays. `params` depend on the kind (see the builders)."""

    kind: str  # "box" | "cylinder" | "ellipsoid"
    params: np.ndarray  # (P, K) float32
    cls: np.ndarray  # (P,) int16 world class id
    inst: np.ndarray  # (P,) int32 instance id, 0 = stuff
    color: np.ndarray  # (P, 3) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.params)

    def bounding_spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) centres and (P,) radii of spheres enclosing each primitive."""
        p = self.params
        if self.kind == "box":  # cx cy cz hx hy hz yaw
            return p[:, :3], np.linalg.norm(p[:, 3:6], axis=1)
        if self.kind == "cylinder":  # cx cy z0 z1 r
            centre = np.stack([p[:, 0], p[:, 1], 0.5 * (p[:, 2] + p[:, 3])], axis=1)
            return centre, np.hypot(0.5 * (p[:, 3] - p[:, 2]), p[:, 4])
        return p[:, :3], p[:, 3:6].max(axis=1)  # ellipsoid: cx cy cz rx ry rz


@dataclass
class PrimitiveBuilder:
    """Accumulates primitives while a world is laid out, then freezes them into arrays."""

    rows: dict[str, list[tuple[list[float], int, int, tuple[float, float, float]]]] = field(
        default_factory=lambda: {"box": [], "cylinder": [], "ellipsoid": []}
    )

    def box(self, centre, half, yaw: float, cls: int, inst: int, color) -> None:
        self.rows["box"].append(([*centre, *half, yaw], cls, inst, tuple(color)))

    def cylinder(self, xy, z0: float, z1: float, radius: float, cls: int, inst: int, color) -> None:
        self.rows["cylinder"].append(([xy[0], xy[1], z0, z1, radius], cls, inst, tuple(color)))

    def ellipsoid(self, centre, radii, cls: int, inst: int, color) -> None:
        self.rows["ellipsoid"].append(([*centre, *radii], cls, inst, tuple(color)))

    def build(self) -> list[PrimitiveSet]:
        widths = {"box": 7, "cylinder": 5, "ellipsoid": 6}
        out = []
        for kind, rows in self.rows.items():
            out.append(
                PrimitiveSet(
                    kind=kind,
                    params=np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, widths[kind]),
                    cls=np.array([r[1] for r in rows], dtype=np.int16),
                    inst=np.array([r[2] for r in rows], dtype=np.int32),
                    color=np.array([r[3] for r in rows], dtype=np.float32).reshape(-1, 3),
                )
            )
        return out


def _valid(t: np.ndarray) -> np.ndarray:
    return np.where(t > _EPS, t, np.inf)


def intersect(prims: PrimitiveSet, origin: np.ndarray, dirs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(M,) hit distance of ray `dirs[m]` (M, 3) from `origin` with primitive `idx[m]`; inf = miss."""
    p = prims.params[idx]  # (M, K)
    if prims.kind == "box":
        return _intersect_boxes(p, origin, dirs)
    if prims.kind == "cylinder":
        return _intersect_cylinders(p, origin, dirs)
    return _intersect_ellipsoids(p, origin, dirs)


def _to_box_frame(p: np.ndarray, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (M, 3) vectors by -yaw of each box: returns x, y in the box frame."""
    c, s = np.cos(p[:, 6]), np.sin(p[:, 6])
    return c * vec[:, 0] + s * vec[:, 1], -s * vec[:, 0] + c * vec[:, 1]


def _intersect_boxes(p: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    rel = origin[None, :].astype(np.float32) - p[:, :3]  # (M, 3)
    ox, oy = _to_box_frame(p, rel)
    dx, dy = _to_box_frame(p, dirs)
    o = np.stack([ox, oy, rel[:, 2]], axis=1)  # (M, 3)
    d = np.stack([dx, dy, dirs[:, 2]], axis=1)  # (M, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-p[:, 3:6] - o) * inv
        t2 = (p[:, 3:6] - o) * inv
    t1 = np.nan_to_num(t1, nan=-np.inf)
    t2 = np.nan_to_num(t2, nan=np.inf)
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    hit = (near <= far) & (near > _EPS)
    return np.where(hit, near, np.inf)


def _intersect_cylinders(p: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    ox = origin[0] - p[:, 0]
    oy = origin[1] - p[:, 1]
    oz = np.float32(origin[2])
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - p[:, 4] ** 2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z = oz + t_side * dz
        side_ok = (disc >= 0) & (a > 1e-12) & (z >= p[:, 2]) & (z <= p[:, 3])
        t_side = np.where(side_ok, t_side, np.inf)
        # caps: top when looking down, bottom when looking up
        z_cap = np.where(dz < 0, p[:, 3], p[:, 2])
        t_cap = (z_cap - oz) / dz
        cx = ox + t_cap * dx
        cy = oy + t_cap * dy
        cap_ok = np.isfinite(t_cap) & (cx * cx + cy * cy <= p[:, 4] ** 2)
        t_cap = np.where(cap_ok, t_cap, np.inf)
    return np.minimum(_valid(t_side), _valid(t_cap))


def _intersect_ellipsoids(p: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    o = (origin[None, :].astype(np.float32) - p[:, :3]) / p[:, 3:6]  # (M, 3) unit-sphere frame
    d = dirs / p[:, 3:6]
    a = (d * d).sum(axis=1)
    b = (o * d).sum(axis=1)
    c = (o * o).sum(axis=1) - 1.0
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where(disc >= 0, _valid(t), np.inf)


def normals(prims: PrimitiveSet, idx: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, 3) unit outward normals of primitives `idx` at surface points (M, 3)."""
    p = prims.params[idx]
    if prims.kind == "ellipsoid":
        n = (points - p[:, :3]) / p[:, 3:6] ** 2
    elif prims.kind == "cylinder":
        rel = points[:, :2] - p[:, :2]
        on_cap = np.minimum(np.abs(points[:, 2] - p[:, 3]), np.abs(points[:, 2] - p[:, 2])) < 1e-3
        r = np.linalg.norm(rel, axis=1)
        n = np.concatenate([rel, np.zeros((len(p), 1), np.float32)], axis=1)
        on_cap &= r < p[:, 4] * 0.999
        n[on_cap] = (0.0, 0.0, 1.0)
    else:
        rel = points - p[:, :3]
        x, y = _to_box_frame(p, rel)
        local = np.stack([x, y, rel[:, 2]], axis=1) / p[:, 3:6]  # (M, 3) in [-1, 1]
        axis = np.abs(local).argmax(axis=1)
        sign = np.sign(local[np.arange(len(p)), axis])
        ln = np.zeros_like(local)
        ln[np.arange(len(p)), axis] = sign
        c, s = np.cos(p[:, 6]), np.sin(p[:, 6])
        n = np.stack([c * ln[:, 0] - s * ln[:, 1], s * ln[:, 0] + c * ln[:, 1], ln[:, 2]], axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)


def hull_corners(prims: PrimitiveSet) -> np.ndarray:
    """(P, 8, 3) float64 corners of a box enclosing each primitive, local frame."""
    p = prims.params.astype(np.float64)
    signs = np.array([[i, j, m] for i in (-1, 1) for j in (-1, 1) for m in (-1, 1)], np.float64)
    if prims.kind == "cylinder":
        centre = np.stack([p[:, 0], p[:, 1], 0.5 * (p[:, 2] + p[:, 3])], axis=1)
        half = np.stack([p[:, 4], p[:, 4], 0.5 * (p[:, 3] - p[:, 2])], axis=1)
        return centre[:, None, :] + signs[None] * half[:, None, :]
    if prims.kind == "ellipsoid":
        return p[:, None, :3] + signs[None] * p[:, None, 3:6]
    local = signs[None] * p[:, None, 3:6]  # (P, 8, 3)
    c, s = np.cos(p[:, 6])[:, None], np.sin(p[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + p[:, None, :3]
