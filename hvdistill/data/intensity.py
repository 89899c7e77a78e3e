"""The LiDAR intensity every network sees: each dataset's stored scale mapped onto one, 0-255.

Shards keep intensity exactly as the source stores it (devkit-equal): nuScenes and Argoverse 2
on 0-255, SemanticKITTI's remission on 0-1. The student's input feature, in pretraining and in
fine-tuning alike, is that value rescaled to `COMMON_SCALE` (0-255, nuScenes' scale: nuScenes and
Argoverse 2 intensities pass unchanged, bit for bit; KITTI's remission is multiplied by 255), so
one network can mix the three rigs without one dataset's intensities being 255 times another's
(docs/mixing.md). Why 0-255 and not 0-1: the student's stem is a bias-free conv and a BatchNorm
whose running variance starts at 1 and moves by its momentum per step; with inputs on 0-1 the
stem's true variance is ~1e-3, so after a short run (the demo fine-tunes 60 steps) the running
variance is still mostly its initial 1 and evaluation divides by it: a random-init model scored
4 % mIoU instead of 30 % in `make demo` that way. On 0-255 the initial 1 is negligible at once.
The full scales are facts of the formats, not tunables.
"""

from __future__ import annotations

import numpy as np

COMMON_SCALE = 255.0  # the intensity scale the networks see (nuScenes')
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
    """(N, 4) float32 x, y, z, intensity as stored -> intensity on 0-COMMON_SCALE: `points`
    itself where the dataset already stores that scale (nuScenes, Argoverse 2; no copy on the
    hot path), else a rescaled copy. Never modifies `points`."""
    factor = COMMON_SCALE / intensity_scale(dataset)
    if factor == 1.0:
        return points
    out = np.array(points, dtype=np.float32, copy=True)  # (N, 4)
    out[:, 3] *= np.float32(factor)
    return out
