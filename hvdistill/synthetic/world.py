"""The procedural driving world: a road with its cross-section, and the objects along it.

A world is laid out in its local frame (x along the road, z up, ground at z = 0) around a
gently curving road whose centre line is y = A sin(2 pi x / L + phase). Across the road
(lateral offset d): two 3.5 m lanes, a parking strip on each side (in some stretches), a
sidewalk, a terrain verge, then buildings. Trees (trunk + canopy), street lights, traffic
signs, parked and oncoming vehicles, pedestrians, bicycles, motorcycles and a small road-works
zone (cones, barriers) are placed on the surfaces where they belong (see layout.py, which
builds worlds). `local_to_global` places the world in the global (map) frame with a
scene-specific offset and heading. The ego vehicle drives in the right lane at constant speed
(`World.ego_pose`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdistill.geometry.transforms import make_transform, yaw_rotation
from hvdistill.synthetic.classes import class_id
from hvdistill.synthetic.primitives import PrimitiveSet

# Cross-section of the road (metres of lateral offset |d| from the centre line).
LANE_WIDTH = 3.5
PARKING_OUTER = 6.0  # parking strip (or road shoulder) from LANE_WIDTH to here
SIDEWALK_OUTER = 9.0  # sidewalk from PARKING_OUTER to here; terrain verge beyond
EGO_LANE_OFFSET = -1.75  # the ego drives in the middle of the right lane
WORLD_MARGIN = 90.0  # world extends this far before the first and after the last ego pose
SEGMENT_LENGTH = 40.0  # parking strips alternate with shoulders in stretches of this length


@dataclass
class ObjectBox:
    """An annotated object (a 'thing'): its box in the local frame."""

    inst: int
    cls: int
    centre: np.ndarray  # (3,) local frame, box centre
    size: np.ndarray  # (3,) width, length, height (nuScenes order)
    yaw: float  # heading of the length axis in the local frame


@dataclass
class Road:
    amplitude: float
    wavelength: float
    phase: float
    parking: np.ndarray  # (S, 2) bool: parking strip on the right / left side per segment
    verge: np.ndarray  # (2,) terrain verge width right / left

    def centre_y(self, x):
        return self.amplitude * np.sin(2 * np.pi * x / self.wavelength + self.phase)

    def slope(self, x):
        k = 2 * np.pi / self.wavelength
        return self.amplitude * k * np.cos(k * x + self.phase)

    def to_local(self, s, d):
        """Road coordinates (along, lateral) -> local (x, y), and the road heading there."""
        s = np.asarray(s, dtype=np.float64)
        slope = self.slope(s)
        norm = np.sqrt(1 + slope**2)
        x = s - d * slope / norm
        y = self.centre_y(s) + d / norm
        return x, y, np.arctan(slope)

    def lateral(self, x, y):
        """Approximate lateral offset d of local points (exact on straight stretches)."""
        return (y - self.centre_y(x)) / np.sqrt(1 + self.slope(x) ** 2)

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) world class of the ground at local (x, y)."""
        d = self.lateral(x, y)
        ad = np.abs(d)
        seg = np.clip(
            (x // SEGMENT_LENGTH).astype(np.int64) + len(self.parking) // 2, 0, len(self.parking) - 1
        )
        has_parking = self.parking[seg, (d > 0).astype(np.int64)]
        out = np.full(x.shape, class_id("terrain"), dtype=np.int16)
        out[ad < SIDEWALK_OUTER] = class_id("sidewalk")
        out[ad < PARKING_OUTER] = np.where(has_parking, class_id("parking"), class_id("road"))[
            ad < PARKING_OUTER
        ]
        out[ad < LANE_WIDTH] = class_id("road")
        return out


@dataclass
class World:
    road: Road
    prims: list[PrimitiveSet]  # box, cylinder, ellipsoid sets
    objects: list[ObjectBox]
    local_to_global: np.ndarray  # (4, 4)
    ego_speed: float
    sun: np.ndarray  # (3,) unit direction towards the sun, local frame
    seed: int

    def ego_local(self, t: float) -> np.ndarray:
        """(4, 4) ego -> local frame at `t` seconds after the scene start."""
        x, y, yaw = self.road.to_local(self.ego_speed * t, EGO_LANE_OFFSET)
        return make_transform(yaw_rotation(float(yaw)), [float(x), float(y), 0.0])

    def ego_pose(self, t: float) -> np.ndarray:
        """(4, 4) ego -> global at `t` seconds after the scene start."""
        return self.local_to_global @ self.ego_local(t)
