"""The one class table of the synthetic world: every world class with its label in each format.

Each world class carries its nuScenes-lidarseg category (the official 32-category list of
nuScenes-lidarseg: name and index, exactly as in the dataset's `category.json`) and its
SemanticKITTI raw label id (the ids of `semantic-kitti.yaml`), so the official mappings
(nuScenes 32 -> 16 classes, SemanticKITTI raw -> 19-class learning map) apply unchanged.
It also holds what the sensors need: a base albedo for the cameras, a reflectivity for the
LiDAR intensity, and the strength of the procedural texture.

World class id 0 is "nothing" (sky in images, no return for the LiDAR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldClass:
    id: int  # world class id (index into WORLD_CLASSES)
    name: str
    nuscenes_name: str  # nuScenes-lidarseg category name
    nuscenes_index: int  # its index in the 32-category lidarseg list
    kitti_id: int  # SemanticKITTI raw semantic label id
    albedo: tuple[int, int, int]  # base RGB colour for the cameras
    reflectivity: float  # LiDAR return strength in [0, 1] at normal incidence
    texture: float  # amplitude of the procedural texture in [0, 1]
    is_thing: bool  # countable object: gets an instance id and a box


WORLD_CLASSES: tuple[WorldClass, ...] = (
    WorldClass(0, "nothing", "noise", 0, 0, (170, 200, 235), 0.0, 0.0, False),
    WorldClass(1, "road", "flat.driveable_surface", 24, 40, (88, 88, 92), 0.10, 0.25, False),
    WorldClass(2, "parking", "flat.other", 25, 44, (112, 106, 100), 0.14, 0.25, False),
    WorldClass(3, "sidewalk", "flat.sidewalk", 26, 48, (170, 165, 155), 0.22, 0.30, False),
    WorldClass(4, "terrain", "flat.terrain", 27, 72, (105, 135, 60), 0.35, 0.45, False),
    WorldClass(5, "building", "static.manmade", 28, 50, (185, 150, 120), 0.30, 0.20, False),
    WorldClass(6, "vegetation", "static.vegetation", 30, 70, (45, 115, 40), 0.45, 0.55, False),
    WorldClass(7, "trunk", "static.vegetation", 30, 71, (95, 70, 45), 0.30, 0.30, False),
    WorldClass(8, "pole", "static.manmade", 28, 80, (150, 150, 155), 0.40, 0.05, False),
    WorldClass(9, "traffic_sign", "static.manmade", 28, 81, (30, 80, 200), 0.95, 0.05, False),
    WorldClass(10, "barrier", "movable_object.barrier", 9, 51, (225, 225, 215), 0.55, 0.10, True),
    WorldClass(11, "traffic_cone", "movable_object.trafficcone", 12, 99, (245, 110, 20), 0.80, 0.05, True),
    WorldClass(12, "car", "vehicle.car", 17, 10, (200, 40, 40), 0.50, 0.05, True),
    WorldClass(13, "truck", "vehicle.truck", 23, 18, (235, 235, 240), 0.50, 0.05, True),
    WorldClass(14, "bus", "vehicle.bus.rigid", 16, 13, (240, 190, 30), 0.50, 0.05, True),
    WorldClass(15, "pedestrian", "human.pedestrian.adult", 2, 30, (60, 60, 150), 0.25, 0.15, True),
    WorldClass(16, "bicycle", "vehicle.bicycle", 14, 11, (30, 30, 30), 0.35, 0.05, True),
    WorldClass(17, "motorcycle", "vehicle.motorcycle", 21, 15, (20, 20, 120), 0.45, 0.05, True),
)

CLASS_BY_NAME: dict[str, WorldClass] = {c.name: c for c in WORLD_CLASSES}
NUM_WORLD_CLASSES = len(WORLD_CLASSES)

# The official nuScenes-lidarseg category list (index = position), as in category.json.
NUSCENES_LIDARSEG_CATEGORIES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)


def class_id(name: str) -> int:
    """World class id of a world class name."""
    return CLASS_BY_NAME[name].id


def nuscenes_lut() -> np.ndarray:
    """(NUM_WORLD_CLASSES,) uint8: world class id -> nuScenes-lidarseg index."""
    return np.array([c.nuscenes_index for c in WORLD_CLASSES], dtype=np.uint8)


def kitti_lut() -> np.ndarray:
    """(NUM_WORLD_CLASSES,) uint32: world class id -> SemanticKITTI raw label id."""
    return np.array([c.kitti_id for c in WORLD_CLASSES], dtype=np.uint32)


def albedo_table() -> np.ndarray:
    """(NUM_WORLD_CLASSES, 3) float32 base colours in [0, 1]."""
    return np.array([c.albedo for c in WORLD_CLASSES], dtype=np.float32) / 255.0


def reflectivity_table() -> np.ndarray:
    """(NUM_WORLD_CLASSES,) float32 LiDAR reflectivity."""
    return np.array([c.reflectivity for c in WORLD_CLASSES], dtype=np.float32)


def texture_table() -> np.ndarray:
    """(NUM_WORLD_CLASSES,) float32 texture amplitude."""
    return np.array([c.texture for c in WORLD_CLASSES], dtype=np.float32)


def check_table() -> None:
    """Raise if a class names a nuScenes category at the wrong index (guards edits)."""
    for c in WORLD_CLASSES:
        if NUSCENES_LIDARSEG_CATEGORIES[c.nuscenes_index] != c.nuscenes_name:
            raise ValueError(
                f"class {c.name}: nuScenes index {c.nuscenes_index} is "
                f"{NUSCENES_LIDARSEG_CATEGORIES[c.nuscenes_index]}, not {c.nuscenes_name}"
            )
