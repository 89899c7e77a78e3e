"""Weighted mixing of several datasets: the quotas and their interleaving (pure), then the real
reader on three small datasets of unequal sizes and weights, in both modes: realised shares per
epoch, rank and worker against the weights, determinism, exact mid-epoch resume, and evaluation
streams that still read every record once."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from hvdistill.config import Config, DataConfig, SourceConfig
from hvdistill.data.shard_index import ShardEntry
from hvdistill.data.shard_mix import EpochMix, quotas, shares
from hvdistill.data.shards import build_shard_dataset
from tests.data.shard_helpers import write_manifest, write_shards

# records per dataset (unequal) and weights that are not the record shares (24:10:6 = .6:.25:.15)
SIZES = {"nuscenes": [4] * 6, "semantickitti": [5, 5], "argoverse2": [3, 3]}
WEIGHTS = {"nuscenes": 1.0, "semantickitti": 2.0, "argoverse2": 1.0}  # shares .25 : .5 : .25
RECORDS = {d: sum(s) for d, s in SIZES.items()}  # 24, 10, 6: T = 40
QUOTAS = {"argoverse2": 10, "nuscenes": 10, "semantickitti": 20}  # of the 40 slots of an epoch
SOURCES = [SourceConfig(name=d, weight=w) for d, w in WEIGHTS.items()]
ONCE = DataConfig(sources=SOURCES, resampled=False, shuffle_buffer=6)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> str:
    """Train shards of the three datasets in one directory, and a small val split of each."""
    out = tmp_path_factory.mktemp("mixed")
    entries = []
    for dataset, sizes in SIZES.items():
        entries += write_shards(out, dataset, sizes)[1]
        entries += write_shards(out, dataset, [2], split="val", first=100)[1]
    write_manifest(out, entries)
    return str(out)


def read(ds, workers: int = 0, batch_size: int = 1) -> list:
    """Every sample of one epoch through a DataLoader, in the order it hands them out."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=list)
    return [s for batch in loader for s in batch]


def test_quotas_are_the_shares_rounded_by_largest_remainder():
    assert quotas(WEIGHTS, 40) == QUOTAS
    assert quotas({"a": 0.3, "b": 0.7}, 10) == {"a": 3, "b": 7}  # 0.3 / 1.0 x 10 is 2.9999...
    assert quotas({"a": 1.0, "b": 1.0, "c": 1.0}, 10) == {"a": 4, "b": 3, "c": 3}  # ties: name order
    assert quotas({"a": 3.0, "b": 1.0}, 7) == {"a": 5, "b": 2}  # 5.25, 1.75
    for length in range(1, 60):
        got = quotas(WEIGHTS, length)
        assert sum(got.values()) == length
        assert all(abs(got[d] - s * length) < 1 for d, s in shares(WEIGHTS).items())


def test_any_run_of_slots_holds_each_dataset_in_proportion_within_two():
    entries = [ShardEntry(f"{d}-{i}.tar", d, "train", n) for d, s in SIZES.items() for i, n in enumerate(s)]
    mix = EpochMix(entries, WEIGHTS, seed=3)
    assert (mix.length, mix.quotas, mix.natural) == (40, QUOTAS, False)
    share = np.array([QUOTAS[d] for d in mix.datasets]) / 40  # (3,)
    for epoch in range(4):
        labels = mix.labels(epoch)  # (40,)
        prefix = np.vstack([np.zeros(3), np.cumsum(np.eye(3)[labels], axis=0)])  # (41, 3)
        for a in range(41):
            for b in range(a, 41):
                assert np.abs(prefix[b] - prefix[a] - (b - a) * share).max() < 2, (epoch, a, b)
    empty = [*entries, ShardEntry("waymo-0.tar", "waymo", "train", 0)]
    with pytest.raises(ValueError, match=r"\['waymo'\] have a weight but no records.*data.datasets"):
        EpochMix(empty, {**WEIGHTS, "waymo": 1.0}, seed=0)


def test_weighted_epochs_give_each_dataset_its_quota_exactly(mixed_dir):
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir], weighted=True)
    assert len(ds) == 40  # an epoch keeps its length: every record's slot
    seen: dict[str, Counter] = {d: Counter() for d in SIZES}
    for epoch in range(8):  # 320 samples
        ds.set_epoch(epoch)
        got = read(ds)
        assert Counter(s.dataset for s in got) == QUOTAS  # exact: the tolerance is the rounding, 0 here
        keys = {d: Counter(s.key for s in got if s.dataset == d) for d in SIZES}
        assert max(keys["nuscenes"].values()) == 1  # 10 of 24 records: a subset, none repeated
        assert set(keys["semantickitti"].values()) == {2}  # 20 slots over 10 records: each twice
        assert set(keys["argoverse2"].values()) == {1, 2}  # 10 over 6: once or twice
        for d in SIZES:
            seen[d].update(keys[d])
            # each record once per cycle of its dataset: so far, all equally often within one
            assert len(seen[d]) == min(RECORDS[d], (epoch + 1) * QUOTAS[d]), (epoch, d)
            assert max(seen[d].values()) - min(seen[d].values()) <= 1, (epoch, d, seen[d])
    delivered = ds.delivered().tolist()  # counted per dataset, then "other"
    assert delivered == [8 * QUOTAS[d] for d in ds.datasets] + [0] and ds.datasets == tuple(sorted(SIZES))
    assert ds.metrics()["samples"] == 320 and ds.metrics()["repeated"] == 0


def test_ranks_and_workers_split_the_same_epoch_each_in_proportion(mixed_dir):
    whole = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir], weighted=True)
    whole.set_epoch(2)
    expected = Counter(s.key for s in read(whole))
    together: Counter = Counter()
    for rank in range(2):
        ds = build_shard_dataset(
            ONCE, rank=rank, world_size=2, shards=[mixed_dir], batch_size=3, weighted=True
        )
        ds.set_epoch(2)
        got = read(ds, workers=2, batch_size=3)
        assert len(got) == len(ds) == 20  # ceil(40 / 2), as without weights
        together.update(s.key for s in got)
        counts = Counter(s.dataset for s in got)
        assert all(abs(counts[d] - QUOTAS[d] / 2) < 2 for d in SIZES), counts  # a rank's run of slots
        assert ds.delivered().tolist()[:3] == [counts[d] for d in ds.datasets]  # over both workers
    assert together == expected  # the ranks read the one epoch between them


def test_weighted_epochs_are_deterministic_and_new_each_epoch(mixed_dir):
    def keys(epoch: int, seed: int = 0) -> list[str]:
        ds = build_shard_dataset(ONCE, rank=0, world_size=1, seed=seed, shards=[mixed_dir], weighted=True)
        ds.set_epoch(epoch)
        return [s.key for s in read(ds, workers=2, batch_size=4)]

    first = keys(1)
    assert keys(1) == first and keys(2) != first and keys(1, seed=7) != first
    assert Counter(keys(2)) != Counter(first)  # another subset of nuscenes, not just another order


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_equals_the_uninterrupted_epoch(mixed_dir, workers):
    def reader():
        return build_shard_dataset(
            ONCE, rank=1, world_size=2, shards=[mixed_dir], batch_size=2, weighted=True
        )

    ds = reader()
    ds.set_epoch(5)
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=lambda b: [s.key for s in b])
    full = list(loader)
    state = ds.state_dict(batches_done=3)
    assert state["mix"] != 0  # the quotas are part of the position
    resumed = reader()
    resumed.load_state_dict(state)
    loader = DataLoader(resumed, batch_size=2, num_workers=workers, collate_fn=lambda b: [s.key for s in b])
    assert list(loader) == full[3:]
    assert resumed.metrics()["samples"] == sum(len(b) for b in full[3:])  # nothing skipped was decoded


def test_evaluation_streams_read_every_record_once(mixed_dir):
    plain = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir])  # weighted=False
    assert plain.mix is None and len(plain) == 40
    assert Counter(s.key for s in read(plain, workers=2)) == Counter(
        f"{d}_{i:03d}" for d, n in RECORDS.items() for i in range(n)
    )
    # what pretraining builds: the train stream is weighted, the val stream reads each record once
    from hvdistill.train.data import build_stream

    cfg = Config()
    cfg.data = DataConfig(sources=SOURCES, resampled=False, shards=[mixed_dir], loader_workers=1)
    assert build_stream(cfg, "train", rank=0, world_size=1).reader.mix is not None
    val = build_stream(cfg, "val", rank=0, world_size=1).reader
    assert val.mix is None and Counter(s.key for s in read(val)) == Counter(
        f"{d}_{i:03d}" for d in SIZES for i in (100, 101)
    )


def test_record_shares_or_one_dataset_leave_the_epoch_unchanged(mixed_dir):
    natural = DataConfig(
        sources=[SourceConfig(name=d, weight=float(n)) for d, n in RECORDS.items()],
        resampled=False,
        shuffle_buffer=6,
    )
    one = DataConfig(sources=SOURCES, datasets=["semantickitti"], resampled=False, shuffle_buffer=6)
    for cfg in (natural, one):
        weighted = build_shard_dataset(cfg, rank=0, world_size=2, shards=[mixed_dir], weighted=True)
        plain = build_shard_dataset(cfg, rank=0, world_size=2, shards=[mixed_dir])
        assert weighted.mix is None and weighted.state_dict(0) == plain.state_dict(0)
        for ds in (weighted, plain):
            ds.set_epoch(3)
        assert [s.key for s in read(weighted, workers=2)] == [s.key for s in read(plain, workers=2)]


def test_resampled_shares_hold_on_every_rank_and_worker(mixed_dir):
    """Each worker draws its datasets independently with the weights: per worker (100 samples)
    and per rank (200) the share of each dataset is within 4 binomial sigmas of its weight's."""
    cfg = DataConfig(sources=SOURCES, resampled=True, epoch_samples=200, shuffle_buffer=0)
    target = shares(WEIGHTS)
    for rank in range(2):
        ds = build_shard_dataset(cfg, rank=rank, world_size=2, shards=[mixed_dir], batch_size=10)
        batches = list(DataLoader(ds, batch_size=10, num_workers=2, collate_fn=list))
        per_worker = [Counter(s.dataset for b in batches[w::2] for s in b) for w in range(2)]  # round-robin
        for counts in [*per_worker, per_worker[0] + per_worker[1]]:
            n = sum(counts.values())
            for d, p in target.items():
                assert abs(counts[d] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (rank, d, counts)
        assert ds.delivered().tolist() == [sum(c[d] for c in per_worker) for d in ds.datasets] + [0]


def test_positions_saved_before_weighted_epochs_still_resume(mixed_dir):
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir], batch_size=4, weighted=True)
    old = {k: v for k, v in ds.state_dict(batches_done=2).items() if k != "mix"}  # no such key then
    again = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir], batch_size=4, weighted=True)
    assert again.load_state_dict(old) == 2


def test_a_changed_mix_resumes_with_a_warning(mixed_dir, caplog):
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[mixed_dir], batch_size=4, weighted=True)
    state = ds.state_dict(batches_done=2)
    heavier = DataConfig(sources=[SourceConfig(name=d, weight=1.0) for d in SIZES], resampled=False)
    other = build_shard_dataset(
        heavier, rank=0, world_size=1, shards=[mixed_dir], batch_size=4, weighted=True
    )
    assert other.load_state_dict(state) == 2
    assert "quotas of a weighted epoch changed" in caplog.text
