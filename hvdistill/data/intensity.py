"""The LiDAR intensity every network sees: each dataset's stored scale mapped onto [0, 1].

Shards keep intensity exactly as the source stores it (devkit-equal): nuScenes and Argoverse 2
on 0-255, SemanticKITTI's remission on 0-1. The student's input feature, in pretraining and in
fine-tuning alike, is that value divided by its dataset's full scale, so one network can mix the
three rigs without one dataset's intensities being 255 times another's (docs/mixing.md). The
full scales are facts of the formats, not tunables.
"""

from __future__ import annotations

import numpy as np

# the largest intensity each format can store (nuScenes .pcd.bin and AV2's uint8: 255;
# KITTI's float remission: 1)
INTENSITY_FULL_SCALE = {"nuscenes": 255.0, "argoverse2": 255.0, "semantickitti": 1.0}


def intensity_scale(dataset: str) -> float:
    """The full scale of `dataset`'s stored intensity; ValueError naming the known datasets."""
    try:
        return INTENSITY_FULL_SCALE[dataset]
    except KeyError:
        raise ValueError(
            f"no intensity scale for dataset {dataset!r}; known: {sorted(INTENSITY_FULL_SCALE)}"
        ) from None


def normalised_intensity(points: np.ndarray, dataset: str) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity as stored -> a copy with intensity / full scale (0-1)."""
    out = np.array(points, dtype=np.float32, copy=True)  # (N, 4)
    out[:, 3] /= intensity_scale(dataset)
    return out
