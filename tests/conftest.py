"""Shared test setup: loopback-only Ray/MLflow defaults and the one synthetic world of the session.

`nuscenes_root` / `kitti_root` / `av2_root` are generated once per session (tests/helpers/world.py,
tests/helpers/av2_world.py) and shared read only: at the end of the session a check fails if any
test wrote into them. A test that damages a dataset takes `nuscenes_copy` / `kitti_copy` /
`av2_copy`, its own copy in tmp_path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _read_only(root: Path):
    """Yield `root`; afterwards fail if any file under it was added, removed or rewritten."""
    from tests.helpers.world import changes, fingerprint

    before = fingerprint(root)
    yield root
    touched = changes(before, fingerprint(root))
    assert not touched, f"a test wrote into the shared world {root} (use the *_copy fixture): {touched[:10]}"


@pytest.fixture(scope="session")
def nuscenes_root(tmp_path_factory) -> Path:
    """The session's generated nuScenes root (tables, samples/, lidarseg/): read only."""
    from tests.helpers.world import (
        write_nuscenes_world,
    )  # imported here: a broken data layer fails only its tests

    yield from _read_only(write_nuscenes_world(tmp_path_factory.mktemp("nuscenes")))


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory) -> Path:
    """The session's generated SemanticKITTI root, with per-pixel class/depth side outputs: read only."""
    from tests.helpers.world import write_kitti_world

    yield from _read_only(write_kitti_world(tmp_path_factory.mktemp("kitti")))


@pytest.fixture(scope="session")
def av2_root(tmp_path_factory) -> Path:
    """The session's generated Argoverse 2 sensor root (train/ and val/, one log each): read only."""
    from tests.helpers.av2_world import write_av2_world

    yield from _read_only(write_av2_world(tmp_path_factory.mktemp("av2")))


@pytest.fixture
def av2_copy(av2_root, tmp_path) -> Path:
    """A private copy of the Argoverse 2 root that a test may damage."""
    return Path(shutil.copytree(av2_root, tmp_path / "av2"))


@pytest.fixture
def nuscenes_copy(nuscenes_root, tmp_path) -> Path:
    """A private copy of the nuScenes root that a test may damage."""
    return Path(shutil.copytree(nuscenes_root, tmp_path / "nuscenes"))


@pytest.fixture
def kitti_copy(kitti_root, tmp_path) -> Path:
    """A private copy of the SemanticKITTI root that a test may damage."""
    return Path(shutil.copytree(kitti_root, tmp_path / "kitti"))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint on 127.0.0.1 (moto, tests/helpers/s3.py) for the session; this process and
    everything it starts afterwards reach it through AWS_ENDPOINT_URL and the AWS_* credentials."""
    from tests.helpers.s3 import S3Server, s3_environment

    server = S3Server()
    try:
        with s3_environment(server):
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 endpoint, as `s3://<bucket>`."""
    return f"s3://{s3_server.new_bucket()}"
