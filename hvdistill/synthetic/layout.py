"""Lays out one world: buildings, vegetation, street furniture, vehicles and people on the road.

`build_world(cfg, scene_index, duration_s)` draws the road and every object from a generator
seeded with (cfg.seed, scene_index), so a world is a pure function of its seed. Objects stand
on the ground (z = 0) on the surface they belong to: vehicles in lanes or parking strips,
pedestrians and bicycles on sidewalks, trees on the verge, buildings behind it. A road-works
zone and a few showcase objects are placed within sight of the start, so every class appears
in even a tiny dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hvdistill.config import SynthConfig
from hvdistill.geometry.transforms import make_transform, yaw_rotation
from hvdistill.synthetic.classes import albedo_table, class_id
from hvdistill.synthetic.primitives import PrimitiveBuilder
from hvdistill.synthetic.world import (
    LANE_WIDTH,
    PARKING_OUTER,
    SEGMENT_LENGTH,
    SIDEWALK_OUTER,
    WORLD_MARGIN,
    ObjectBox,
    Road,
    World,
)

CAR_COLOURS = np.array(
    [
        [0.75, 0.1, 0.1],
        [0.9, 0.9, 0.92],
        [0.08, 0.08, 0.1],
        [0.6, 0.62, 0.65],
        [0.1, 0.2, 0.6],
        [0.15, 0.4, 0.2],
    ],
    dtype=np.float32,
)


class Layout:
    """Accumulates the primitives and annotated objects of one world."""

    def __init__(self, road: Road, rng: np.random.Generator, s_range: tuple[float, float], density: float):
        self.road, self.rng, self.s0, self.s1 = road, rng, s_range[0], s_range[1]
        self.density = density
        self.b = PrimitiveBuilder()
        self.objects: list[ObjectBox] = []
        self.next_inst = 1
        self.albedo = albedo_table()
        self.reserved: list[tuple[float, float]] = []  # s-intervals kept free of random objects

    def colour(self, name: str, jitter: float = 0.08) -> np.ndarray:
        base = self.albedo[class_id(name)]
        return np.clip(base * (1 + self.rng.uniform(-jitter, jitter, 3)), 0, 1)

    def place(self, s: float, d: float) -> tuple[float, float, float]:
        """Road coordinates -> local x, y and the road heading there."""
        x, y, heading = self.road.to_local(s, d)
        return float(x), float(y), float(heading)

    def along(self, spacing: tuple[float, float]) -> Iterator[float]:
        """Positions along the road with random gaps (divided by the object density)."""
        s = self.s0 + self.rng.uniform(0, spacing[1])
        while s < self.s1:
            if not any(a <= s <= b for a, b in self.reserved):
                yield s
            s += self.rng.uniform(*spacing) / self.density

    def thing(self, name: str, x: float, y: float, size: tuple[float, float, float], yaw: float) -> int:
        """Register an annotated object standing on the ground; returns its instance id."""
        inst = self.next_inst
        self.next_inst += 1
        self.objects.append(
            ObjectBox(
                inst, class_id(name), np.array([x, y, size[2] / 2]), np.array(size, dtype=float), float(yaw)
            )
        )
        return inst

    def part(
        self,
        x: float,
        y: float,
        yaw: float,
        fwd: float,
        left: float,
        z0: float,
        size: tuple[float, float, float],
        name: str,
        inst: int,
        colour,
    ) -> None:
        """A box part of an object: offset (fwd, left) in the object frame, size (len, wid, h)."""
        px = x + fwd * np.cos(yaw) - left * np.sin(yaw)
        py = y + fwd * np.sin(yaw) + left * np.cos(yaw)
        half = (size[0] / 2, size[1] / 2, size[2] / 2)
        self.b.box((px, py, z0 + half[2]), half, yaw, class_id(name), inst, colour)


# ---------------------------------------------------------------------------------------------
# Stuff: buildings, vegetation, poles, signs


def add_buildings(lay: Layout, side: int) -> None:
    s = lay.s0 + lay.rng.uniform(0, 10)
    while s < lay.s1:
        length, gap = lay.rng.uniform(8, 30), lay.rng.uniform(2, 10)
        depth, height = lay.rng.uniform(8, 16), lay.rng.uniform(6, 22)
        d_front = SIDEWALK_OUTER + lay.road.verge[(side + 1) // 2]
        x, y, heading = lay.place(s + length / 2, side * (d_front + depth / 2))
        lay.b.box(
            (x, y, height / 2),
            (length / 2, depth / 2, height / 2),
            heading,
            class_id("building"),
            0,
            lay.colour("building", 0.25),
        )
        s += length + gap


def add_tree(lay: Layout, x: float, y: float) -> None:
    trunk_r, trunk_h = lay.rng.uniform(0.12, 0.28), lay.rng.uniform(1.8, 3.2)
    rxy, rz = lay.rng.uniform(1.3, 2.6), lay.rng.uniform(1.2, 2.2)
    lay.b.cylinder((x, y), 0.0, trunk_h + 0.3 * rz, trunk_r, class_id("trunk"), 0, lay.colour("trunk"))
    lay.b.ellipsoid(
        (x, y, trunk_h + 0.6 * rz),
        (rxy, rxy * lay.rng.uniform(0.8, 1.2), rz),
        class_id("vegetation"),
        0,
        lay.colour("vegetation", 0.2),
    )


def add_vegetation(lay: Layout, side: int) -> None:
    verge = lay.road.verge[(side + 1) // 2]
    for s in lay.along((7.0, 14.0)):
        x, y, _ = lay.place(s, side * (SIDEWALK_OUTER + lay.rng.uniform(0.4, max(verge - 0.4, 0.5))))
        add_tree(lay, x, y)
    for s in lay.along((25.0, 50.0)):
        length, width = lay.rng.uniform(3, 8), lay.rng.uniform(0.8, 1.2)
        x, y, heading = lay.place(s, side * (SIDEWALK_OUTER + min(verge, 2.0) * 0.5))
        h = lay.rng.uniform(0.8, 1.5)
        lay.b.box(
            (x, y, h / 2),
            (length / 2, width / 2, h / 2),
            heading,
            class_id("vegetation"),
            0,
            lay.colour("vegetation", 0.2),
        )


def add_street_furniture(lay: Layout, side: int) -> None:
    for s in lay.along((22.0, 32.0)):
        x, y, _ = lay.place(s, side * (PARKING_OUTER + 0.5))
        lay.b.cylinder((x, y), 0.0, lay.rng.uniform(6, 8), 0.11, class_id("pole"), 0, lay.colour("pole"))
    for s in lay.along((35.0, 60.0)):
        x, y, heading = lay.place(s, side * (PARKING_OUTER + 0.35))
        h = lay.rng.uniform(2.2, 2.6)
        lay.b.cylinder((x, y), 0.0, h, 0.04, class_id("pole"), 0, lay.colour("pole"))
        lay.b.box(
            (x, y, h + 0.3),
            (0.03, 0.35, 0.35),
            heading,
            class_id("traffic_sign"),
            0,
            lay.colour("traffic_sign", 0.1),
        )


# ---------------------------------------------------------------------------------------------
# Things: vehicles, people, bicycles, road works


def add_car(lay: Layout, x: float, y: float, yaw: float) -> None:
    length, width = lay.rng.uniform(4.0, 4.9), lay.rng.uniform(1.75, 1.95)
    inst = lay.thing("car", x, y, (width, length, 1.5), yaw)
    colour = CAR_COLOURS[lay.rng.integers(len(CAR_COLOURS))]
    lay.part(x, y, yaw, 0.0, 0.0, 0.18, (length, width, 0.75), "car", inst, colour)
    lay.part(
        x, y, yaw, -0.08 * length, 0.0, 0.93, (0.55 * length, width - 0.15, 0.57), "car", inst, colour * 0.55
    )


def add_truck(lay: Layout, x: float, y: float, yaw: float) -> None:
    cargo = lay.rng.uniform(5.5, 8.0)
    length = cargo + 2.3
    inst = lay.thing("truck", x, y, (2.5, length, 3.8), yaw)
    colour = lay.colour("truck", 0.1)
    lay.part(x, y, yaw, length / 2 - 1.1, 0.0, 0.4, (2.2, 2.4, 2.6), "truck", inst, colour * 0.7)
    lay.part(x, y, yaw, -1.15, 0.0, 0.9, (cargo, 2.5, 2.9), "truck", inst, colour)


def add_bus(lay: Layout, x: float, y: float, yaw: float) -> None:
    length = lay.rng.uniform(10.5, 12.5)
    inst = lay.thing("bus", x, y, (2.55, length, 3.3), yaw)
    lay.part(x, y, yaw, 0.0, 0.0, 0.3, (length, 2.55, 3.0), "bus", inst, lay.colour("bus", 0.15))


def add_motorcycle(lay: Layout, x: float, y: float, yaw: float) -> None:
    inst = lay.thing("motorcycle", x, y, (0.8, 2.1, 1.3), yaw)
    colour = lay.colour("motorcycle", 0.3)
    for fwd in (-0.7, 0.7):
        lay.part(x, y, yaw, fwd, 0.0, 0.0, (0.62, 0.12, 0.62), "motorcycle", inst, colour * 0.4)
    lay.part(x, y, yaw, 0.0, 0.0, 0.45, (1.5, 0.5, 0.55), "motorcycle", inst, colour)
    lay.part(x, y, yaw, 0.65, 0.0, 1.0, (0.1, 0.75, 0.1), "motorcycle", inst, colour * 0.4)


def add_bicycle(lay: Layout, x: float, y: float, yaw: float) -> None:
    inst = lay.thing("bicycle", x, y, (0.6, 1.75, 1.1), yaw)
    colour = lay.colour("bicycle", 0.3)
    for fwd in (-0.53, 0.53):
        lay.part(x, y, yaw, fwd, 0.0, 0.0, (0.68, 0.05, 0.68), "bicycle", inst, colour)
    lay.part(x, y, yaw, 0.0, 0.0, 0.55, (0.9, 0.06, 0.12), "bicycle", inst, colour)
    lay.part(x, y, yaw, 0.48, 0.0, 0.95, (0.08, 0.58, 0.06), "bicycle", inst, colour)


def add_pedestrian(lay: Layout, x: float, y: float, yaw: float) -> None:
    height, radius = lay.rng.uniform(1.55, 1.9), lay.rng.uniform(0.18, 0.25)
    inst = lay.thing("pedestrian", x, y, (0.65, 0.7, height), yaw)
    colour = np.clip(lay.colour("pedestrian") * lay.rng.uniform(0.5, 1.8, 3), 0, 1)
    lay.b.cylinder((x, y), 0.0, height - 0.24, radius, class_id("pedestrian"), inst, colour)
    lay.b.ellipsoid(
        (x, y, height - 0.12),
        (0.1, 0.1, 0.12),
        class_id("pedestrian"),
        inst,
        np.array([0.85, 0.65, 0.5], np.float32),
    )


def add_cone(lay: Layout, x: float, y: float) -> None:
    inst = lay.thing("traffic_cone", x, y, (0.4, 0.4, 0.7), 0.0)
    for z0, z1, r in ((0.0, 0.05, 0.2), (0.05, 0.3, 0.15), (0.3, 0.5, 0.1), (0.5, 0.7, 0.05)):
        lay.b.cylinder((x, y), z0, z1, r, class_id("traffic_cone"), inst, lay.colour("traffic_cone"))


def add_barrier(lay: Layout, x: float, y: float, yaw: float) -> None:
    inst = lay.thing("barrier", x, y, (0.5, 2.0, 1.0), yaw)
    lay.part(x, y, yaw, 0.0, 0.0, 0.0, (2.0, 0.5, 1.0), "barrier", inst, lay.colour("barrier"))


VEHICLES = {"car": add_car, "truck": add_truck, "bus": add_bus, "motorcycle": add_motorcycle}
VEHICLE_LENGTH = {"car": 4.9, "truck": 10.3, "bus": 12.5, "motorcycle": 2.1}


def add_vehicle_row(
    lay: Layout,
    d: float,
    backwards: bool,
    mix: dict[str, float],
    gap: tuple[float, float],
    skip: tuple[float, float] | None = None,
    parking_side: int | None = None,
) -> None:
    """Vehicles in a row at lateral offset d (a lane or a parking strip)."""
    names, probs = list(mix), np.array(list(mix.values()))
    s = lay.s0 + lay.rng.uniform(0, gap[1])
    while s < lay.s1:
        name = names[lay.rng.choice(len(names), p=probs / probs.sum())]
        length = VEHICLE_LENGTH[name]
        centre = s + length / 2
        seg = int(centre // SEGMENT_LENGTH) + len(lay.road.parking) // 2
        free = not any(a - length <= centre <= b + length for a, b in lay.reserved)
        if skip is not None:
            free &= not skip[0] - length <= centre <= skip[1] + length
        if parking_side is not None:
            free &= bool(lay.road.parking[np.clip(seg, 0, len(lay.road.parking) - 1), parking_side])
        if free:
            x, y, heading = lay.place(centre, d)
            VEHICLES[name](lay, x, y, heading + (np.pi if backwards else 0.0))
        s += length + lay.rng.uniform(*gap) / lay.density


def add_people(lay: Layout, side: int) -> None:
    for s in lay.along((6.0, 18.0)):
        x, y, heading = lay.place(s, side * lay.rng.uniform(PARKING_OUTER + 0.9, SIDEWALK_OUTER - 0.4))
        add_pedestrian(lay, x, y, heading + lay.rng.choice([0.0, np.pi]))
    for s in lay.along((20.0, 45.0)):
        x, y, heading = lay.place(s, side * (PARKING_OUTER + 0.9))
        add_bicycle(lay, x, y, heading + lay.rng.uniform(-0.2, 0.2))


def add_showcase(lay: Layout, s_zone: float) -> None:
    """Road works on the right, an oncoming bus and a few things on the left, near the start."""
    lay.reserved.append((s_zone - 2.0, s_zone + 16.0))
    for k in range(4):
        x, y, heading = lay.place(s_zone + 2.2 * k, -(LANE_WIDTH + 1.2))
        add_barrier(lay, x, y, heading)
    for k in range(5):
        x, y, _ = lay.place(s_zone - 1.0 + 2.5 * k, -(LANE_WIDTH - 0.35))
        add_cone(lay, x, y)
    x, y, heading = lay.place(s_zone + 2.0, LANE_WIDTH + 1.25)
    add_motorcycle(lay, x, y, heading + np.pi)
    x, y, heading = lay.place(s_zone + 6.0, PARKING_OUTER + 0.9)
    add_bicycle(lay, x, y, heading)
    x, y, heading = lay.place(s_zone + 9.0, PARKING_OUTER + 1.5)
    add_pedestrian(lay, x, y, heading)
    x, y, heading = lay.place(s_zone + 12.0, LANE_WIDTH + 1.25)
    add_car(lay, x, y, heading + np.pi)
    x, y, heading = lay.place(s_zone + 7.0, LANE_WIDTH / 2)
    add_bus(lay, x, y, heading + np.pi)


def populate(lay: Layout, s_end: float) -> None:
    """Everything of one world; the ego drives from s = 0 to s = s_end in the right lane."""
    add_showcase(lay, float(lay.rng.uniform(8.0, 16.0)))
    for side in (-1, 1):
        add_buildings(lay, side)
        add_vegetation(lay, side)
        add_street_furniture(lay, side)
        add_people(lay, side)
        add_vehicle_row(
            lay,
            side * (LANE_WIDTH + 1.25),
            side > 0,
            {"car": 0.8, "truck": 0.1, "motorcycle": 0.1},
            (0.8, 6.0),
            parking_side=(side + 1) // 2,
        )
    oncoming = {"car": 0.7, "truck": 0.15, "bus": 0.15}
    add_vehicle_row(lay, LANE_WIDTH / 2, True, oncoming, (10.0, 35.0))
    # the ego lane: only ahead of the drive's end and behind its start
    add_vehicle_row(lay, -LANE_WIDTH / 2, False, oncoming, (12.0, 35.0), skip=(-12.0, s_end + 15.0))


def build_world(cfg: SynthConfig, scene_index: int, duration_s: float) -> World:
    """The world of one scene, deterministic in (cfg.seed, scene_index)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, scene_index]))
    s_end = cfg.ego_speed_mps * duration_s
    s_range = (-WORLD_MARGIN, s_end + WORLD_MARGIN)
    n_seg = 2 * int(np.ceil(max(abs(s_range[0]), abs(s_range[1])) / SEGMENT_LENGTH)) + 4
    road = Road(
        amplitude=float(rng.uniform(0.0, 4.0)),
        wavelength=float(rng.uniform(160.0, 320.0)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        parking=rng.random((n_seg, 2)) < 0.6,
        verge=rng.uniform(1.5, 6.0, 2),
    )
    lay = Layout(road, rng, s_range, cfg.object_density)
    populate(lay, s_end)
    heading = float(rng.uniform(-np.pi, np.pi))
    offset = np.array([300.0 + 250.0 * scene_index, 900.0 + rng.uniform(-100, 100), 0.0])
    sun_azimuth = float(rng.uniform(-np.pi, np.pi))
    sun = np.array([np.cos(sun_azimuth), np.sin(sun_azimuth), 1.4])  # local frame
    return World(
        road=road,
        prims=lay.b.build(),
        objects=lay.objects,
        local_to_global=make_transform(yaw_rotation(heading), offset),
        ego_speed=cfg.ego_speed_mps,
        sun=sun / np.linalg.norm(sun),
        seed=cfg.seed,
    )
