"""What multi-node training needs from the shard reader: the epoch reaches persistent workers,
every rank runs the same full micro-batches, validation is balanced across ranks, resuming
skips without decoding, and the dataset pickles (Ray Train workers, spawned DataLoader workers)."""

import itertools
import pickle
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from hvdistill.config import DataConfig
from hvdistill.data import shards as shards_module
from hvdistill.data.shard_plan import batches_consumed, worker_counts
from hvdistill.data.shards import build_shard_dataset
from tests.data.shard_helpers import write_dataset, write_manifest, write_shards

RESAMPLED = DataConfig(resampled=True, epoch_samples=14, shuffle_buffer=5)
ONCE = DataConfig(resampled=False, shuffle_buffer=5)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_dataset(out, "nuscenes", 17, per_shard=3)  # 6 shards, the last one short
    return str(out)


def batches(ds, batch_size: int, workers: int, **kw) -> list[list[str]]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=key_list, **kw)
    return list(loader)


def key_list(samples) -> list[str]:  # module level: picklable for spawned workers
    return [s.key for s in samples]


@pytest.mark.parametrize("cfg", [RESAMPLED, ONCE], ids=["resampled", "once"])
def test_set_epoch_reaches_persistent_workers(shard_dir, cfg):
    ds = build_shard_dataset(cfg, rank=0, world_size=1, shards=[shard_dir])
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        orders.append([s.key for s in loader])
    assert orders[0] != orders[1]
    for epoch in (0, 1):  # each epoch equals what freshly forked workers give for it
        fresh = build_shard_dataset(cfg, rank=0, world_size=1, shards=[shard_dir])
        fresh.set_epoch(epoch)
        assert [s.key for s in DataLoader(fresh, batch_size=None, num_workers=2)] == orders[epoch]


def test_worker_counts_give_whole_batches_in_round_robin_order():
    for n, workers, batch in itertools.product(range(0, 40), range(1, 5), range(1, 5)):
        counts = worker_counts(n, workers, batch)
        assert sum(counts) == n
        assert sum(c % batch != 0 for c in counts) <= 1  # at most one short batch per rank
        # DataLoader's round-robin over the workers' batches: the short one comes last, and after
        # any k batches each worker has delivered batches_consumed(k)[w] of them
        per_worker = [
            [(w, batch)] * (c // batch) + ([(w, c % batch)] if c % batch else [])
            for w, c in enumerate(counts)
        ]
        order = [b for rnd in itertools.zip_longest(*per_worker) for b in rnd if b is not None]
        assert all(size == batch for _, size in order[:-1]) and len(order) == -(-n // batch)
        for k in range(len(order) + 1):
            delivered = Counter(w for w, _ in order[:k])
            assert batches_consumed(k, workers) == [delivered[w] for w in range(workers)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_rank_gets_the_same_full_micro_batches(shard_dir, drop_last):
    sizes = []
    for rank in range(2):  # 2 simulated ranks x 2 workers, micro-batch 3
        ds = build_shard_dataset(RESAMPLED, rank=rank, world_size=2, shards=[shard_dir], batch_size=3)
        got = batches(ds, 3, 2, drop_last=drop_last)
        assert len(got) == ds.batches_per_rank() == 4  # 14 samples per rank -> 4 full batches of 3
        sizes.append([len(b) for b in got])
    assert sizes == [[3] * 4, [3] * 4]


def test_validation_is_balanced_with_more_ranks_than_shards(tmp_path):
    _, entries = write_shards(tmp_path, "nuscenes", [1, 2, 5])  # uneven: 8 samples in 3 shards
    write_manifest(tmp_path, entries)
    for world, workers, batch in [(5, 2, 1), (3, 2, 2), (4, 1, 3)]:
        seen, padded, lengths = Counter(), 0, []
        for rank in range(world):
            ds = build_shard_dataset(
                ONCE, rank=rank, world_size=world, shards=[str(tmp_path)], batch_size=batch
            )
            got = [
                s for b in DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=list) for s in b
            ]
            lengths.append(len(got))
            seen.update(s.key for s in got if not s.meta.get("padding"))
            padded += sum(1 for s in got if s.meta.get("padding"))
        per_rank = -(-8 // world)
        assert lengths == [per_rank] * world  # nobody runs out: no collective can hang
        assert sorted(seen) == [f"nuscenes_{i:03d}" for i in range(8)] and set(seen.values()) == {1}
        assert padded == per_rank * world - 8


@pytest.mark.parametrize("cfg", [RESAMPLED, ONCE], ids=["resampled", "once"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_skips_without_decoding(shard_dir, cfg, workers):
    ds = build_shard_dataset(cfg, rank=1, world_size=2, shards=[shard_dir], batch_size=2)
    ds.set_epoch(4)
    full = batches(ds, 2, workers)
    state = ds.state_dict(batches_done=3)  # checkpointed after 3 micro-batches
    resumed = build_shard_dataset(cfg, rank=1, world_size=2, shards=[shard_dir], batch_size=2)
    resumed.load_state_dict(state)
    assert batches(resumed, 2, workers) == full[3:]
    # only what is yielded is decoded: the 6 skipped samples were neither read nor decoded
    assert resumed.metrics()["samples"] == sum(len(b) for b in full[3:])


def test_resume_counts_decode_calls(shard_dir, monkeypatch):
    calls = []
    real = shards_module.decode_sample
    monkeypatch.setattr(
        shards_module, "decode_sample", lambda record, limits: calls.append(1) or real(record, limits)
    )
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[shard_dir], batch_size=4)
    ds.set_epoch(2, start_batch=3)
    assert len(list(ds)) == 17 - 12 and len(calls) == 5


def test_resume_refuses_a_different_setup(shard_dir):
    ds = build_shard_dataset(RESAMPLED, rank=0, world_size=2, shards=[shard_dir], batch_size=2)
    batches(ds, 2, 2)
    state = ds.state_dict(batches_done=1)
    assert state["workers"] == 2
    other = build_shard_dataset(RESAMPLED, rank=0, world_size=2, shards=[shard_dir], batch_size=1)
    with pytest.raises(ValueError, match="batch_size was 2, now 1"):
        other.load_state_dict(state)
    same = build_shard_dataset(RESAMPLED, rank=0, world_size=2, shards=[shard_dir], batch_size=2)
    same.load_state_dict(state)
    with pytest.raises(ValueError, match="recorded with 2 DataLoader workers"):
        batches(same, 2, 1)


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_dataset_pickles_before_iteration(shard_dir):
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[shard_dir])
    ds.set_epoch(5)
    copy = pickle.loads(pickle.dumps(ds))  # e.g. built on the driver, sent to a Ray Train worker
    assert copy.epoch == 5 and [s.key for s in copy] == [s.key for s in ds]
    assert copy.metrics()["samples"] == 17 and ds.metrics()["samples"] == 17  # a copy counts apart


@pytest.mark.slow  # two spawned interpreters importing torch: ~20 s on 2 busy cores
def test_dataset_runs_in_spawned_workers(shard_dir):
    ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[shard_dir])
    ds.set_epoch(5)
    expected = [s.key for s in DataLoader(ds, batch_size=None, num_workers=2)]
    spawned = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[shard_dir])
    spawned.set_epoch(5)
    loader = DataLoader(spawned, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert [s.key for s in loader] == expected
    assert spawned.metrics()["samples"] == 17  # counters are shared with spawned workers too
