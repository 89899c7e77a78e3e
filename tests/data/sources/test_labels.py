"""Label maps: the SemanticKITTI learning map and the nuScenes 32 -> 16 mapping of the devkit."""

import numpy as np

from hvdistill.data.sources.labels import (
    NUSCENES_CLASS_NAMES,
    SEMANTICKITTI_CLASS_NAMES,
    SEMANTICKITTI_LEARNING_MAP,
    UNMAPPED,
    class_names,
    map_labels,
    semantickitti_lookup,
)


def test_semantickitti_learning_map_matches_the_official_yaml():
    expected = {
        10: 1,
        11: 2,
        15: 3,
        18: 4,
        20: 5,
        30: 6,
        31: 7,
        32: 8,
        40: 9,
        44: 10,
        48: 11,
        49: 12,
        50: 13,
        51: 14,
        70: 15,
        71: 16,
        72: 17,
        80: 18,
        81: 19,
        0: 0,
        1: 0,
        52: 0,
        99: 0,
        13: 5,
        16: 5,
        60: 9,
        252: 1,
        253: 7,
        254: 6,
        255: 8,
        256: 5,
        257: 5,
        258: 4,
        259: 5,
    }
    assert SEMANTICKITTI_LEARNING_MAP == expected
    assert set(SEMANTICKITTI_LEARNING_MAP.values()) == set(range(20))
    assert len(SEMANTICKITTI_CLASS_NAMES) == 20 and len(NUSCENES_CLASS_NAMES) == 17
    assert class_names("semantickitti-19")[13] == "building"
    assert class_names("nuscenes-lidarseg-16")[4] == "car"


def test_semantickitti_lookup_flags_unknown_ids():
    lut = semantickitti_lookup()
    raw = np.array([10, 252, 40, 60, 7, 1000, 0], dtype=np.uint32)
    mapped, bad = map_labels(raw, lut)
    assert mapped.tolist() == [1, 1, 9, 9, UNMAPPED, UNMAPPED, 0]
    assert bad.tolist() == [7, 1000]
