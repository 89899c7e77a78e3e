"""Label maps from the datasets' raw classes to the training classes (0 = ignore).

- nuScenes-lidarseg: the 32 fine classes -> 16 challenge classes with nuscenes-devkit's own
  `LidarsegClassMapper` (the official mapping; the fine indices come from the dataset's
  category table, so the lookup is built from a loaded `NuScenes`).
- SemanticKITTI: raw label ids (lower 16 bits of a .label entry) -> 19 classes with the
  `learning_map` of the official semantic-kitti.yaml, written out below.

Lookups are dense uint8 arrays; entries the map does not define hold `UNMAPPED`, so a reader
can tell a corrupt label file from a legitimate "ignore".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nuscenes import NuScenes

NUSCENES_LABEL_MAP = "nuscenes-lidarseg-16"
SEMANTICKITTI_LABEL_MAP = "semantickitti-19"
UNMAPPED = 255  # lookup value of a raw id that the map does not define
UNKNOWN_IDS_SHOWN = 10  # raw ids a SampleReadError lists when a label file holds unknown ones
NUSCENES_UNKNOWN = "lidarseg indices {ids} are not nuScenes-lidarseg classes"
SEMANTICKITTI_UNKNOWN = "raw ids {ids} are not SemanticKITTI classes"

# index = training class; 0 = ignore (the devkit's LidarsegClassMapper.get_coarse2idx order)
NUSCENES_CLASS_NAMES: tuple[str, ...] = (
    "ignore",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)

# index = training class; 0 = ignore (semantic-kitti.yaml learning_map_inv order)
SEMANTICKITTI_CLASS_NAMES: tuple[str, ...] = (
    "unlabeled",
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)

# semantic-kitti.yaml `learning_map`: raw id -> training class
SEMANTICKITTI_LEARNING_MAP: dict[int, int] = {
    0: 0,  # unlabeled
    1: 0,  # outlier -> unlabeled
    10: 1,  # car
    11: 2,  # bicycle
    13: 5,  # bus -> other-vehicle
    15: 3,  # motorcycle
    16: 5,  # on-rails -> other-vehicle
    18: 4,  # truck
    20: 5,  # other-vehicle
    30: 6,  # person
    31: 7,  # bicyclist
    32: 8,  # motorcyclist
    40: 9,  # road
    44: 10,  # parking
    48: 11,  # sidewalk
    49: 12,  # other-ground
    50: 13,  # building
    51: 14,  # fence
    52: 0,  # other-structure -> unlabeled
    60: 9,  # lane-marking -> road
    70: 15,  # vegetation
    71: 16,  # trunk
    72: 17,  # terrain
    80: 18,  # pole
    81: 19,  # traffic-sign
    99: 0,  # other-object -> unlabeled
    252: 1,  # moving-car -> car
    253: 7,  # moving-bicyclist -> bicyclist
    254: 6,  # moving-person -> person
    255: 8,  # moving-motorcyclist -> motorcyclist
    256: 5,  # moving-on-rails -> other-vehicle
    257: 5,  # moving-bus -> other-vehicle
    258: 4,  # moving-truck -> truck
    259: 5,  # moving-other-vehicle -> other-vehicle
}

SEMANTICKITTI_RAW_ID_BITS = 16  # lower 16 bits: semantic id; upper 16 bits: instance id


def semantickitti_lookup() -> np.ndarray:
    """(65536,) uint8: raw semantic id -> training class, UNMAPPED where the map is silent."""
    lut = np.full(1 << SEMANTICKITTI_RAW_ID_BITS, UNMAPPED, dtype=np.uint8)
    for raw, cls in SEMANTICKITTI_LEARNING_MAP.items():
        lut[raw] = cls
    return lut


def nuscenes_lookup(nusc: NuScenes) -> np.ndarray:
    """(256,) uint8: lidarseg fine index -> 16-class index, from the devkit's class mapper.

    Needs a `NuScenes` loaded with lidarseg (the mapper reads its category indices).
    """
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    mapper = LidarsegClassMapper(nusc)
    lut = np.full(256, UNMAPPED, dtype=np.uint8)
    for fine, coarse in mapper.fine_idx_2_coarse_idx_mapping.items():
        lut[int(fine)] = int(coarse)
    return lut


def class_names(label_map: str) -> tuple[str, ...]:
    """Training class names (index = class id) of a label map name."""
    names = {NUSCENES_LABEL_MAP: NUSCENES_CLASS_NAMES, SEMANTICKITTI_LABEL_MAP: SEMANTICKITTI_CLASS_NAMES}
    if label_map not in names:
        raise ValueError(f"unknown label map '{label_map}'; known: {sorted(names)}")
    return names[label_map]


def map_labels(raw: np.ndarray, lookup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a lookup: returns (mapped (N,) uint8, sorted unique raw ids the lookup lacks)."""
    raw = raw.astype(np.int64, copy=False)
    in_range = (raw >= 0) & (raw < len(lookup))
    mapped = np.full(raw.shape, UNMAPPED, dtype=np.uint8)
    mapped[in_range] = lookup[raw[in_range]]
    bad = np.unique(raw[mapped == UNMAPPED])
    return mapped, bad
