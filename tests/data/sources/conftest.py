"""A tiny synthetic nuScenes and SemanticKITTI dataset, generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvdistill.config import SynthConfig
from hvdistill.synthetic import write_nuscenes, write_semantickitti

NUSCENES_VERSION = "v1.0-trainval"


def tiny_synth_config() -> SynthConfig:
    """2 scenes x 2 frames, small images, a sparse LiDAR: seconds to generate."""
    return SynthConfig(
        scenes=2,
        frames_per_scene=2,
        seed=3,
        image_width=192,
        image_height=108,
        lidar_beams=16,
        lidar_points_per_beam=360,
    )


@pytest.fixture(scope="session")
def nuscenes_root(tmp_path_factory) -> Path:
    """A generated nuScenes root (tables, samples/, lidarseg/) shared by the session: read only."""
    out = tmp_path_factory.mktemp("nuscenes")
    return Path(write_nuscenes(out, tiny_synth_config(), version=NUSCENES_VERSION, progress=False))


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory) -> Path:
    """A generated SemanticKITTI root with per-pixel class/depth side outputs: read only."""
    out = tmp_path_factory.mktemp("kitti")
    return Path(write_semantickitti(out, tiny_synth_config(), side_outputs=True, progress=False))


@pytest.fixture
def nuscenes_copy(nuscenes_root, tmp_path) -> Path:
    """A private copy of the nuScenes root that a test may damage."""
    return Path(shutil.copytree(nuscenes_root, tmp_path / "nuscenes"))


@pytest.fixture
def kitti_copy(kitti_root, tmp_path) -> Path:
    """A private copy of the SemanticKITTI root that a test may damage."""
    return Path(shutil.copytree(kitti_root, tmp_path / "kitti"))
