"""Labelled shards of the session's synthetic world (nuScenes and SemanticKITTI, train and val), read only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.helpers import write_labelled_shards


@pytest.fixture(scope="session")
def labelled_shards(nuscenes_root, kitti_root, tmp_path_factory) -> Path:
    """A shard directory with manifest.json: nuScenes 6 train + 3 val, KITTI 3 train + 3 val scans."""
    return write_labelled_shards(
        tmp_path_factory.mktemp("labelled-shards"), {"nuscenes": nuscenes_root, "semantickitti": kitti_root}
    )
