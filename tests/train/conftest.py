"""Shards of the session's synthetic world (train + val), written once for all of tests/train/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import shard_world


@pytest.fixture(scope="session")
def train_shards(nuscenes_root, tmp_path_factory) -> Path:
    """A shard directory with the world's 6 train and 3 val samples (two cameras, 96 x 54 images)."""
    return shard_world(nuscenes_root, tmp_path_factory.mktemp("train-shards"))


@pytest.fixture(scope="session")
def forkable() -> None:
    """Heavy imports done once in the test process, so ranks forked from it inherit them
    (deepspeed and spconv each take seconds to import)."""
    import hvdistill.losses.total  # noqa: F401
    import hvdistill.models.distiller  # noqa: F401
    from hvdistill.train.engine import import_deepspeed

    import_deepspeed("cpu")
