"""The shard reader: exact samples, node x worker splitting, resampling, mixing, dataset filter and
weights, bad-data counting."""

import json
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data import schema
from hvdistill.data.shards import build_shard_dataset
from tests.data.shard_helpers import assert_same, make_prepared, reference, write_dataset, write_records

NUSCENES_AND_KITTI = [
    SourceConfig(name="nuscenes", weight=3.0),
    SourceConfig(name="semantickitti", weight=1.0),
]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return out, write_dataset(out, "nuscenes", 20, per_shard=3)  # 7 shards


def keys(ds) -> list[str]:
    return [s.key for s in ds]


def test_reads_every_sample_exactly_as_written(shard_dir):
    out, samples = shard_dir
    ds = build_shard_dataset(
        DataConfig(resampled=False, shuffle_buffer=8), rank=0, world_size=1, shards=[str(out)]
    )
    got = {s.key: s for s in ds}
    assert sorted(got) == sorted(s.key for s in samples)
    for s in samples:
        assert_same(got[s.key], reference(s))
    assert ds.metrics() == {
        "samples": 20,
        "bad_samples": 0,
        "bad_shards": 0,
        "missing_samples": 0,
        "repeated": 0,
    }


def test_shuffle_buffer_changes_order_not_content(shard_dir):
    out, _ = shard_dir
    plain = keys(
        build_shard_dataset(
            DataConfig(resampled=False, shuffle_buffer=0), rank=0, world_size=1, shards=[str(out)]
        )
    )
    mixed = keys(
        build_shard_dataset(
            DataConfig(resampled=False, shuffle_buffer=10), rank=0, world_size=1, shards=[str(out)]
        )
    )
    assert sorted(plain) == sorted(mixed) and plain != mixed


def test_two_ranks_two_workers_see_each_sample_once(shard_dir):
    out, samples = shard_dir
    cfg = DataConfig(resampled=False, shuffle_buffer=4)
    seen: Counter = Counter()
    for rank in range(2):
        ds = build_shard_dataset(cfg, rank=rank, world_size=2, shards=[str(out / "manifest.json")])
        ds.set_epoch(3)
        got = keys(DataLoader(ds, batch_size=None, num_workers=2))
        assert len(got) == 10 == len(ds)  # 20 samples, balanced
        seen.update(got)
        assert ds.metrics()["samples"] == len(got)  # counted across worker processes
    assert seen == Counter(s.key for s in samples)


def test_resampled_mode_gives_every_rank_the_same_length(shard_dir):
    out, _ = shard_dir
    cfg = DataConfig(resampled=True, epoch_samples=9, shuffle_buffer=4)
    for rank in range(2):
        ds = build_shard_dataset(cfg, rank=rank, world_size=2, shards=[str(out)])
        assert len(list(DataLoader(ds, batch_size=None, num_workers=2))) == 9
    default = build_shard_dataset(DataConfig(resampled=True), rank=0, world_size=2, shards=[str(out)])
    assert len(list(default)) == 10  # dataset size / world size


def test_weighted_mixing_of_two_datasets(tmp_path):
    write_dataset(tmp_path / "a", "nuscenes", 6, per_shard=2)
    write_dataset(tmp_path / "b", "semantickitti", 6, per_shard=2)
    cfg = DataConfig(sources=NUSCENES_AND_KITTI, resampled=True, epoch_samples=400, shuffle_buffer=0)
    ds = build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(tmp_path / "a"), str(tmp_path / "b")])
    counts = Counter(s.dataset for s in ds)
    assert sum(counts.values()) == 400
    assert 0.68 < counts["nuscenes"] / 400 < 0.82


def test_dataset_filter_and_unweighted_datasets(tmp_path):
    write_dataset(tmp_path / "a", "nuscenes", 4, per_shard=2)
    write_dataset(tmp_path / "b", "semantickitti", 4, per_shard=2)
    both = [str(tmp_path / "a"), str(tmp_path / "b")]
    # semantickitti has no weight in data.sources (the default lists nuscenes only): refused
    with pytest.raises(ValueError, match=r"\['semantickitti'\] without a weight in data.sources"):
        build_shard_dataset(DataConfig(resampled=False), rank=0, world_size=1, shards=both)
    # ... unless filtered out
    only = build_shard_dataset(
        DataConfig(resampled=False, datasets=["nuscenes"]), rank=0, world_size=1, shards=both
    )
    assert {s.dataset for s in only} == {"nuscenes"} and len(only) == 4
    kitti = DataConfig(sources=NUSCENES_AND_KITTI, resampled=False, datasets=["semantickitti"])
    assert {s.dataset for s in build_shard_dataset(kitti, rank=0, world_size=1, shards=both)} == {
        "semantickitti"
    }
    with pytest.raises(ValueError, match="data.datasets"):
        build_shard_dataset(DataConfig(datasets=["waymo"]), rank=0, world_size=1, shards=both)


def test_bad_samples_and_shards_are_counted_not_fatal(tmp_path):
    samples = write_dataset(tmp_path, "nuscenes", 6, per_shard=2)
    records = [schema.encode_sample(make_prepared(f"extra_{i}", "nuscenes", 10 + i), 90) for i in range(2)]
    records[0]["cam0.jpg"] = b"not a jpeg"  # corrupt member
    (info,) = write_records(tmp_path, "nuscenes-train-bad-p000", records)
    truncated = tmp_path / "nuscenes-train-c000-p000-0000.tar"  # first sample cut short
    truncated.write_bytes(truncated.read_bytes()[:1500])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"].append({**info.to_dict(), "dataset": "nuscenes", "split": "train"})
    manifest["shards"].append({**info.to_dict(), "name": "gone.tar", "dataset": "nuscenes", "split": "train"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = build_shard_dataset(DataConfig(resampled=False), rank=0, world_size=1, shards=[str(tmp_path)])
    got = list(ds)
    assert len(got) == len(ds) == 10  # every planned record yields one sample: itself or a stand-in
    real = sorted(s.key for s in got if not s.meta.get("padding"))
    assert real == ["extra_1"] + [s.key for s in samples[2:]]
    # the truncated shard: its first record is cut (bad), its second is lost (missing), and the
    # shard is broken; gone.tar is unreadable and both its records are missing
    assert ds.metrics() == {
        "samples": 5,
        "bad_samples": 2,
        "bad_shards": 2,
        "missing_samples": 3,
        "repeated": 5,
    }


def test_reader_streams_only_the_configured_splits_and_checks_the_schema(tmp_path):
    write_dataset(tmp_path, "nuscenes", 4, per_shard=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["split"] = "val"  # a val shard in the same directory
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    train = keys(
        build_shard_dataset(DataConfig(resampled=False), rank=0, world_size=1, shards=[str(tmp_path)])
    )
    both_cfg = DataConfig(resampled=False, shard_splits=["train", "val"])
    both = keys(build_shard_dataset(both_cfg, rank=0, world_size=1, shards=[str(tmp_path)]))
    assert len(train) == 2 and len(both) == 4
    manifest["schema"] = 999
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(schema.SchemaError, match="re-shard"):
        build_shard_dataset(DataConfig(), rank=0, world_size=1, shards=[str(tmp_path)])


def test_shards_with_larger_images_than_the_config_are_refused(tmp_path):
    write_dataset(tmp_path, "nuscenes", 2, per_shard=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    config = {"stored_image_width": 1600, "stored_image_height": 900}
    manifest["sources"] = [{"dataset": "nuscenes", "split": "train", "config": config, "complete": True}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="data.stored_image_width=1600"):
        build_shard_dataset(DataConfig(), rank=0, world_size=1, shards=[str(tmp_path)])
    cfg = DataConfig(stored_image_width=1600, stored_image_height=900, resampled=False)
    assert len(keys(build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(tmp_path)]))) == 2


def test_resampled_reader_stops_when_nothing_decodes(tmp_path):
    write_dataset(tmp_path, "nuscenes", 4, per_shard=2)
    for tar in tmp_path.glob("*.tar"):
        tar.write_bytes(b"not a tar at all" * 100)
    cfg = DataConfig(resampled=True, epoch_samples=10, max_consecutive_bad=5)
    ds = build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(tmp_path)])
    with pytest.raises(RuntimeError, match="in a row"):
        list(ds)
