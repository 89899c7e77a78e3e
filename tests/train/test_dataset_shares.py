"""The realised share of each dataset: per logging interval from the reader's counters, summed over
ranks in the Meter's one collective, and in a real pretraining run's MLflow store beside the
configured share."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from hvdistill.config import DataConfig, SourceConfig, load_config
from hvdistill.data.shards import build_shard_dataset
from hvdistill.train import loop
from hvdistill.train.dataset_shares import DatasetShares
from hvdistill.train.loop import Meter
from tests.data.shard_helpers import write_manifest, write_shards
from tests.helpers.world import NUSCENES_VERSION
from tests.train.helpers import CAMERAS, STORED, tiny_train_config

SOURCES = [SourceConfig(name="nuscenes", weight=3.0), SourceConfig(name="semantickitti", weight=1.0)]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    entries = write_shards(out, "nuscenes", [3, 3])[1] + write_shards(out, "semantickitti", [4])[1]
    write_manifest(out, entries)
    cfg = DataConfig(sources=SOURCES, resampled=False, shuffle_buffer=0)
    return build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(out)], weighted=True)


def test_each_window_counts_only_its_own_samples(reader):
    shares = DatasetShares(reader)
    assert shares.configured() == {"data/share/nuscenes": 0.75, "data/share/semantickitti": 0.25}
    samples = iter(reader)  # one epoch of 10: quotas 8 (nuscenes) and 2 (semantickitti)
    first = Counter(next(samples).dataset for _ in range(4))
    window = shares.window()
    assert window.tolist() == [first["nuscenes"], first["semantickitti"], 0]
    rest = Counter(s.dataset for s in samples)
    assert shares.window().tolist() == [rest["nuscenes"], rest["semantickitti"], 0]  # not cumulative
    assert (first + rest) == {"nuscenes": 8, "semantickitti": 2}
    assert shares.metrics([8.0, 2.0, 0.0]) == {"data/share/nuscenes": 0.8, "data/share/semantickitti": 0.2}
    assert shares.metrics([6.0, 2.0, 2.0])["data/share/nuscenes"] == 0.6  # "other" counts in the total
    assert shares.metrics([0.0, 0.0, 0.0]) == {}  # an empty window logs nothing


def test_the_meter_sums_the_counts_over_ranks_in_its_one_collective(reader, monkeypatch):
    calls = []

    def three_ranks(x):  # rank 0 is this process; ranks 1 and 2 delivered other counts
        calls.append(x)
        others = torch.tensor([[0.0, 10.0, 4.0, 1.0, 0.0], [0.0, 10.0, 2.0, 3.0, 0.0]], dtype=torch.float64)
        return torch.cat([x[None], others])

    monkeypatch.setattr(loop.dist, "all_gather_equal", three_ranks)
    shares = DatasetShares(reader)
    mine = Counter(s.dataset for s in reader)  # 8 + 2 more since the previous window
    meter = Meter(samples_per_micro=1, shares=shares)
    meter.micro_batch(torch.ones(4))
    out = meter.flush()
    assert len(calls) == 1 and calls[0].shape == (5,)  # wait, peak, then 2 datasets + other
    total = mine["nuscenes"] + mine["semantickitti"] + 4 + 1 + 2 + 3
    assert out["data/share/nuscenes"] == pytest.approx((mine["nuscenes"] + 6) / total)
    assert out["data/share/semantickitti"] == pytest.approx((mine["semantickitti"] + 4) / total)


def _two_dataset_shards(nuscenes_root: Path, kitti_root: Path, out: Path) -> Path:
    """Train shards of the synthetic world's nuScenes (6 samples) and SemanticKITTI (3) in one dir."""
    from sharding.job import shard_in_process

    cfg = load_config(None, [*STORED, CAMERAS], sections=("data",))
    sources = [
        SourceConfig(name="nuscenes", root=str(nuscenes_root), version=NUSCENES_VERSION, split="train"),
        SourceConfig(name="semantickitti", root=str(kitti_root), split="train"),
    ]
    shard_in_process(sources, cfg.data, out)
    return out


@pytest.mark.slow  # shards two datasets and pretrains 6 tiny steps of 3 samples: ~15 s on 2 cores
def test_pretraining_logs_the_share_of_every_interval_to_mlflow(nuscenes_root, kitti_root, tmp_path):
    from hvdistill.tracking import metric_history, run_record
    from hvdistill.train.run import run

    shards = _two_dataset_shards(nuscenes_root, kitti_root, tmp_path / "shards")
    cfg = tiny_train_config(
        shards,
        f"train.output_dir={tmp_path / 'runs'}",
        "train.run_name=shares",
        "train.global_batch=3",  # SemanticKITTI's one camera: the depth net needs >= 2 images
        "train.micro_batch=3",
        "train.max_steps=6",  # two epochs of 9 samples
        "train.log_every=3",  # one logging interval per epoch
        "data.resampled=false",
        "tracking.enabled=true",
    )
    # equal weights: quotas 5 + 4 of the 9 slots (largest remainder, the tie to the earlier name),
    # where an epoch of every record once would be 6 + 3
    cfg.data.sources = [SourceConfig(name="nuscenes"), SourceConfig(name="semantickitti")]
    result = run(cfg)
    uri, run_id = result.tracking_uri, result.tracking_run_id
    for dataset, quota in (("nuscenes", 5), ("semantickitti", 4)):
        history = metric_history(uri, run_id, f"data/share/{dataset}")
        assert history == [(3, pytest.approx(quota / 9)), (6, pytest.approx(quota / 9))], dataset
    params = run_record(uri, run_id)["params"]
    assert params["data/share/nuscenes"] == params["data/share/semantickitti"] == "0.5"
