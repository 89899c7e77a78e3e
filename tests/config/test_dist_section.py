"""The Ray fields of the `dist` section: resources per worker and restarts, checked with their fixes."""

import pytest

from hvdistill.config import ConfigError, load_config


def test_defaults_are_valid_and_reserve_one_cpu_per_worker():
    cfg = load_config(None, [], sections=["dist"])
    assert cfg.dist.cpus_per_worker == 1 and cfg.dist.max_failures >= 0 and cfg.dist.storage_path == ""


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dist.cpus_per_worker=0", "dist.cpus_per_worker"),
        ("dist.max_failures=-2", "dist.max_failures"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override], sections=["dist"])


def test_gpus_per_worker_is_checked_only_with_gpus():
    load_config(None, ["dist.gpus_per_worker=0"], sections=["dist"])  # ignored without use_gpu
    with pytest.raises(ConfigError, match="dist.gpus_per_worker"):
        load_config(None, ["dist.gpus_per_worker=0", "dist.use_gpu=true"], sections=["dist"])
    assert (
        load_config(
            None, ["dist.gpus_per_worker=0.5", "dist.use_gpu=true"], sections=["dist"]
        ).dist.gpus_per_worker
        == 0.5
    )
