"""One loopback Ray cluster (2 CPUs) for all of tests/sharding/; the synthetic world is tests/conftest.py's.

The cluster starts after the session's S3 endpoint (tests/conftest.py `s3_server`), so its
workers inherit AWS_ENDPOINT_URL and the credentials, as workers of a real job inherit theirs.

The world's facts (NUSCENES_VERSION, STORED, split_with_data, tiny_synth_config) live in
tests/helpers/world.py; they are re-exported here for tests that import them from this file.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.world import NUSCENES_VERSION, STORED, split_with_data, tiny_synth_config

__all__ = ["NUSCENES_VERSION", "STORED", "split_with_data", "tiny_synth_config"]


@pytest.fixture(scope="package")
def ray_address(s3_server):
    """A local Ray on 127.0.0.1 with 2 CPUs, started once for this package's modules (a start
    costs seconds) and shut down after its last test; the jobs under test connect to it. Its
    workers reach `s3_server` (the environment is set before Ray starts)."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()
