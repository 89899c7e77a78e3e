"""The shard reader: exact samples, node x worker splitting, resampling, mixing, bad-data counting."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data import schema
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.data.shards import build_shard_dataset
from sharding.writer import ShardWriter


def make_prepared(key: str, dataset: str, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:30, 0:40]
    image = np.stack([xx * 5, yy * 7, (xx + yy + seed) % 256], -1).astype(np.uint8)
    cam = CameraFrame(
        "CAM_FRONT",
        image,
        np.eye(3),
        np.eye(4),
        np.eye(4),
        seed,
        f"c{seed}",
        superpixels=(xx // 10 + 4 * (yy // 10)).astype(np.int16),
    )
    return Sample(
        key,
        dataset,
        rng.normal(size=(50, 4)).astype(np.float32),
        np.eye(4),
        np.eye(4),
        [cam],
        labels=rng.integers(0, 5, 50).astype(np.uint8),
        timestamp=seed,
        pairs=rng.normal(size=(7, 5)).astype(np.float32),
        meta={"i": seed},
    )


def write_dataset(out: Path, dataset: str, n: int, per_shard: int) -> list[Sample]:
    """n samples in shards of `per_shard` samples, plus a manifest.json like sharding's."""
    out.mkdir(parents=True, exist_ok=True)
    samples = [make_prepared(f"{dataset}_{i:03d}", dataset, i) for i in range(n)]
    records = [schema.encode_sample(s, 90) for s in samples]
    shards = []
    for start in range(0, n, per_shard):
        writer = ShardWriter(out, f"{dataset}-train-c{start:03d}-p000", max_bytes=1 << 30)
        for r in records[start : start + per_shard]:
            writer.write(r)
        shards += [{**s.to_dict(), "dataset": dataset, "split": "train"} for s in writer.close()]
    manifest = {"schema": schema.SCHEMA_VERSION, "shards": shards, "sources": [], "skipped": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return samples


def reference(sample: Sample) -> Sample:
    return schema.decode_sample(schema.encode_sample(sample, 90))


def assert_same(a: Sample, b: Sample) -> None:
    assert (a.key, a.dataset, a.timestamp, a.meta) == (b.key, b.dataset, b.timestamp, b.meta)
    for name in ("points", "labels", "pairs", "lidar_to_ego", "ego_to_global"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for ca, cb in zip(a.cameras, b.cameras):
        for name in ("image", "superpixels", "intrinsics", "cam_to_ego", "ego_to_global"):
            np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> tuple[Path, list[Sample]]:
    out = tmp_path_factory.mktemp("shards")
    return out, write_dataset(out, "nuscenes", 20, per_shard=3)  # 7 shards


def test_reads_every_sample_exactly_as_written(shard_dir):
    out, samples = shard_dir
    cfg = DataConfig(resampled=False, shuffle_buffer=8)
    ds = build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(out)])
    got = {s.key: s for s in ds}
    assert sorted(got) == sorted(s.key for s in samples)
    for s in samples:
        assert_same(got[s.key], reference(s))
    assert ds.metrics() == {"samples": 20, "bad_samples": 0, "bad_shards": 0}


def test_shuffle_buffer_changes_order_not_content(shard_dir):
    out, samples = shard_dir
    plain = [
        s.key
        for s in build_shard_dataset(
            DataConfig(resampled=False, shuffle_buffer=0), rank=0, world_size=1, shards=[str(out)]
        )
    ]
    mixed = [
        s.key
        for s in build_shard_dataset(
            DataConfig(resampled=False, shuffle_buffer=10), rank=0, world_size=1, shards=[str(out)]
        )
    ]
    assert sorted(plain) == sorted(mixed) and plain != mixed


def test_two_ranks_two_workers_see_each_sample_once(shard_dir):
    out, samples = shard_dir
    cfg = DataConfig(resampled=False, shuffle_buffer=4)
    seen: Counter = Counter()
    for rank in range(2):
        ds = build_shard_dataset(cfg, rank=rank, world_size=2, shards=[str(out / "manifest.json")])
        ds.set_epoch(3)
        loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s)
        keys = [s.key for s in loader]
        assert keys  # every rank gets work
        seen.update(keys)
        assert ds.metrics()["samples"] == len(keys)  # counted across worker processes
    assert seen == Counter(s.key for s in samples)


def test_resampled_mode_gives_every_rank_the_same_length(shard_dir):
    out, _ = shard_dir
    cfg = DataConfig(resampled=True, epoch_samples=9, shuffle_buffer=4)
    for rank in range(2):
        ds = build_shard_dataset(cfg, rank=rank, world_size=2, shards=[str(out)])
        loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s)
        assert len(list(loader)) == 9
    default = build_shard_dataset(DataConfig(resampled=True), rank=0, world_size=2, shards=[str(out)])
    assert len(list(default)) == 10  # dataset size / world size


def test_weighted_mixing_of_two_datasets(tmp_path):
    write_dataset(tmp_path / "a", "nuscenes", 6, per_shard=2)
    write_dataset(tmp_path / "b", "semantickitti", 6, per_shard=2)
    sources = [SourceConfig(name="nuscenes", weight=3.0), SourceConfig(name="semantickitti", weight=1.0)]
    cfg = DataConfig(sources=sources, resampled=True, epoch_samples=400, shuffle_buffer=0)
    ds = build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(tmp_path / "a"), str(tmp_path / "b")])
    counts = Counter(s.dataset for s in ds)
    assert sum(counts.values()) == 400
    assert 0.68 < counts["nuscenes"] / 400 < 0.82


def test_bad_samples_and_shards_are_counted_not_fatal(tmp_path):
    samples = write_dataset(tmp_path, "nuscenes", 6, per_shard=2)
    records = [schema.encode_sample(make_prepared(f"extra_{i}", "nuscenes", 10 + i), 90) for i in range(2)]
    records[0]["cam0.jpg"] = b"not a jpeg"  # corrupt member
    writer = ShardWriter(tmp_path, "nuscenes-train-bad-p000", max_bytes=1 << 30)
    for r in records:
        writer.write(r)
    (info,) = writer.close()
    truncated = tmp_path / "nuscenes-train-c000-p000-0000.tar"  # first sample cut short
    truncated.write_bytes(truncated.read_bytes()[:1500])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"].append({**info.to_dict(), "dataset": "nuscenes"})
    manifest["shards"].append({**info.to_dict(), "name": "gone.tar", "dataset": "nuscenes"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = build_shard_dataset(DataConfig(resampled=False), rank=0, world_size=1, shards=[str(tmp_path)])
    keys = sorted(s.key for s in ds)
    assert keys == ["extra_1"] + [s.key for s in samples[2:]]
    assert ds.metrics() == {"samples": 5, "bad_samples": 2, "bad_shards": 1}


def test_reader_streams_only_the_configured_splits_and_checks_the_schema(tmp_path):
    write_dataset(tmp_path, "nuscenes", 4, per_shard=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["split"] = "val"  # a val shard in the same directory
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    train = [
        s.key
        for s in build_shard_dataset(
            DataConfig(resampled=False), rank=0, world_size=1, shards=[str(tmp_path)]
        )
    ]
    both = [
        s.key
        for s in build_shard_dataset(
            DataConfig(resampled=False, shard_splits=["train", "val"]),
            rank=0,
            world_size=1,
            shards=[str(tmp_path)],
        )
    ]
    assert len(train) == 2 and len(both) == 4
    manifest["schema"] = 999
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(schema.SchemaError, match="re-shard"):
        build_shard_dataset(DataConfig(), rank=0, world_size=1, shards=[str(tmp_path)])


def test_resampled_reader_stops_when_nothing_decodes(tmp_path):
    write_dataset(tmp_path, "nuscenes", 4, per_shard=2)
    for tar in tmp_path.glob("*.tar"):
        tar.write_bytes(b"not a tar at all" * 100)
    ds = build_shard_dataset(
        DataConfig(resampled=True, epoch_samples=10, max_consecutive_bad=5),
        rank=0,
        world_size=1,
        shards=[str(tmp_path)],
    )
    with pytest.raises(RuntimeError, match="in a row"):
        list(ds)
