"""One loopback Ray cluster (2 CPUs) per test module and a small synthetic nuScenes / KITTI world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hvdistill.config import SourceConfig, SynthConfig
from hvdistill.data.sources import build_source

NUSCENES_VERSION = "v1.0-trainval"
STORED = ["data.stored_image_width=96", "data.stored_image_height=54"]  # exercises the resize


def tiny_synth_config(scenes: int = 3, frames: int = 3) -> SynthConfig:
    return SynthConfig(
        scenes=scenes,
        frames_per_scene=frames,
        seed=5,
        image_width=192,
        image_height=108,
        lidar_beams=16,
        lidar_points_per_beam=360,
    )


def split_with_data(name: str, root: Path) -> str:
    """The split (train or val) in which the generated root has chunks."""
    for split in ("train", "val"):
        cfg = SourceConfig(name=name, root=str(root), version=NUSCENES_VERSION, split=split)
        if build_source(cfg).chunks():
            return split
    raise AssertionError(f"the generated {name} root has no chunk in the official splits")


@pytest.fixture(scope="module")
def ray_address():
    """A module-scoped local Ray on 127.0.0.1 with 2 CPUs; the jobs under test reuse it."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def nuscenes_root(tmp_path_factory) -> Path:
    from hvdistill.synthetic import write_nuscenes

    out = tmp_path_factory.mktemp("nuscenes")
    return Path(write_nuscenes(out, tiny_synth_config(), version=NUSCENES_VERSION))


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    from hvdistill.synthetic import write_semantickitti

    out = tmp_path_factory.mktemp("kitti")
    return Path(write_semantickitti(out, tiny_synth_config(scenes=1, frames=3)))
