"""The one synthetic world the tests read: a tiny nuScenes and SemanticKITTI dataset, and its facts.

Generated once per test session (tests/conftest.py: `nuscenes_root`, `kitti_root`), shared
read only; a test that damages a dataset takes `nuscenes_copy` / `kitti_copy`. Sized for the
sharding tests: 3 nuScenes scenes x 3 keyframes (scenes alternate the official train / val
lists: 6 train samples, 3 val), 2 SemanticKITTI sequences (00 train, 08 val) x 3 frames with
per-pixel side outputs; small images and a sparse LiDAR, about two seconds to generate.
"""

from __future__ import annotations

from pathlib import Path

from hvdistill.config import SourceConfig, SynthConfig
from hvdistill.data.sources import build_source

NUSCENES_VERSION = "v1.0-trainval"
STORED = ["data.stored_image_width=96", "data.stored_image_height=54"]  # exercises the resize
WORLD = dict(
    scenes=3,
    frames_per_scene=3,
    seed=5,
    image_width=192,
    image_height=108,
    lidar_beams=16,
    lidar_points_per_beam=360,
)
KITTI_SEQUENCES = ("00", "08")  # the writer's default: one train, one val sequence


def tiny_synth_config(
    scenes: int = WORLD["scenes"], frames: int = WORLD["frames_per_scene"], **changes: int
) -> SynthConfig:
    """The world's SynthConfig; other sizes or `changes` for a test that writes its own world."""
    return SynthConfig(**{**WORLD, "scenes": scenes, "frames_per_scene": frames, **changes})


def write_nuscenes_world(out: Path) -> Path:
    """The nuScenes root (tables, samples/, lidarseg/) of the test world under `out`."""
    from hvdistill.synthetic import write_nuscenes

    return Path(write_nuscenes(out, tiny_synth_config(), version=NUSCENES_VERSION, progress=False))


def write_kitti_world(out: Path) -> Path:
    """The SemanticKITTI root of the test world, with side outputs, under `out`."""
    from hvdistill.synthetic import write_semantickitti

    return Path(write_semantickitti(out, tiny_synth_config(), side_outputs=True, progress=False))


def split_with_data(name: str, root: Path) -> str:
    """The split (train or val) in which the generated root has chunks."""
    for split in ("train", "val"):
        cfg = SourceConfig(name=name, root=str(root), version=NUSCENES_VERSION, split=split)
        if build_source(cfg).chunks():
            return split
    raise AssertionError(f"the generated {name} root has no chunk in the official splits")


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under `root`, to detect writes."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files added, removed or rewritten between two fingerprints."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


FRAMES = WORLD["frames_per_scene"]  # keyframes per nuScenes scene, frames per KITTI sequence
NUSCENES_SAMPLES = WORLD["scenes"] * FRAMES  # over both official splits
