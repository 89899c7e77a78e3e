"""Streaming training samples from the shards written by `hvdistill shard`: modes, ranks, resume.

`build_shard_dataset(cfg)` returns an IterableDataset of `Sample`s, exactly the samples
`prepare_sample(source.read(key))` gives (images after the JPEG coding they are stored with).
The pipeline: shard list (hvdistill/data/shard_index.py: manifests read as data, datasets
filtered and weighted) -> record references from the tar headers (shard_tar.py, local files
opened by the reader itself; object-store shards fetched whole into memory, bounded, with
`data.read_ahead` shards of the stream's planned order fetching ahead in background threads:
shard_fetch.py) -> bounded shuffle buffer of references -> skip to the resume position (nothing
read or decoded) -> read and decode (schema.py, every size checked before allocating, every
sample range-checked). Where the bytes come from never changes which records a stream yields or
their order.

Modes (`data.resampled`):
- True (training): each worker draws shards with replacement, datasets mixed with
  `data.sources[*].weight`. Every rank yields `batches_per_rank() * batch_size` samples: the
  per-rank count (`data.epoch_samples`, or records / world size) rounded down to whole
  batches, split over DataLoader workers in whole batches (shard_plan.worker_counts), so every
  rank runs the same number of full micro-batches. Bad records are skipped and replaced by the
  next record.
- False: epochs over the records, ranks balanced to `ceil(records / world)` samples each by
  repeating records from the start of the epoch's order; a record that cannot be used (bad, or
  missing from a truncated shard) is replaced by a copy of a good sample. Every rank therefore
  yields the same number of samples, even with more ranks than shards, and no collective waits
  on a rank that ran out. Repeats carry `meta["padding"] = True` so evaluation can drop them.
  `weighted` (build_shard_dataset) fills the slots: False (the default: validation, evaluation)
  every record once; True (training) each dataset its weighted share (shard_mix.py).

Epoch and resume position live in shared memory, so `set_epoch` reaches persistent DataLoader
workers. `state_dict(batches_done)` / `load_state_dict` resume mid-epoch: each worker skips the
references of what it had delivered (DataLoader's round-robin order) without reading them.
Counters (`metrics()`; samples per dataset: `delivered()`) are per-worker rows of a shared tensor.
Nothing unpicklable is held, so the dataset can be built in, or sent to, a Ray Train worker and
used with spawned workers.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import random
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from hvdistill.config import DataConfig
from hvdistill.data.sample import Sample
from hvdistill.data.sample_checks import DecodeLimits, SchemaError
from hvdistill.data.schema import decode_sample
from hvdistill.data.shard_fetch import Fetch, fetch_limit, prefetched
from hvdistill.data.shard_index import ShardEntry, check_stored_sizes, resolve_shards, select_datasets
from hvdistill.data.shard_mix import build_mix, epoch_plan, interleave
from hvdistill.data.shard_plan import batches_consumed, per_rank, resume_batch, worker_counts
from hvdistill.data.shard_tar import RecordRef, ShardError, read_record, scan_bytes, scan_shard

log = logging.getLogger(__name__)
COUNTERS = ("samples", "bad_samples", "bad_shards", "missing_samples", "repeated")
_EPOCH, _START_BATCH, _WORKERS, _EXPECT_WORKERS = range(4)  # slots of the shared state tensor
_OTHER = "(other)"  # delivered(): samples whose dataset the shards' manifests do not name


@dataclass(frozen=True, slots=True)
class Slot:
    """One place in a worker's stream: a record, or None for a planned record that is absent."""

    ref: RecordRef | None
    padding: bool = False


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) without a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardDataset(IterableDataset):
    """IterableDataset of decoded `Sample`s; see the module docstring for the modes."""

    def __init__(
        self,
        entries: list[ShardEntry],
        cfg: DataConfig,
        rank: int,
        world_size: int,
        seed: int = 0,
        batch_size: int = 1,
        max_workers: int | None = None,
        weighted: bool = False,
    ):
        super().__init__()
        if not entries or sum(e.samples for e in entries) <= 0:
            raise ValueError(
                "no samples in the given shards; set data.shards to a shard dir or manifest.json"
            )
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size {batch_size} must be >= 1 and rank {rank} in [0, {world_size})")
        self.entries, self.cfg, self.seed, self.batch_size = list(entries), cfg, int(seed), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.limits = DecodeLimits.from_config(cfg)
        weights = {s.name: float(s.weight) for s in cfg.sources}
        self.weights = {e.dataset: weights[e.dataset] for e in entries}
        self.datasets = tuple(sorted(self.weights))  # the columns of delivered()
        self.mix = build_mix(self.entries, self.weights, self.seed, weighted and not cfg.resampled)
        if self.batches_per_rank() < 1:
            raise ValueError(
                f"{self.samples_per_rank()} samples per rank make no batch of {batch_size}; "
                f"raise data.epoch_samples or lower the batch size"
            )
        self.max_workers = max(1, int(cfg.loader_workers if max_workers is None else max_workers))
        self._state = torch.zeros(4, dtype=torch.int64).share_memory_()  # epoch, resume, workers
        columns = len(COUNTERS) + len(self.datasets) + 1  # the counters, then delivered()
        self._counts = torch.zeros((self.max_workers + 1, columns), dtype=torch.int64).share_memory_()
        self._column = {d: len(COUNTERS) + i for i, d in enumerate((*self.datasets, _OTHER))}
        self._row, self._failures_in_a_row = 0, 0  # per process (each worker holds its own copy)

    # ---- sizes, epoch, position, metrics ----
    def samples_per_rank(self) -> int:
        """Samples this rank yields per epoch (equal on every rank)."""
        if not self.cfg.resampled:
            return per_rank(self.entries, self.world_size)
        n = self.cfg.epoch_samples or sum(e.samples for e in self.entries) // self.world_size
        return n // self.batch_size * self.batch_size

    def batches_per_rank(self) -> int:
        """Batches of `batch_size` per rank per epoch (the last one short only when not resampled)."""
        return -(-self.samples_per_rank() // self.batch_size)

    def __len__(self) -> int:
        return self.samples_per_rank()

    @property
    def epoch(self) -> int:
        return int(self._state[_EPOCH])

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Epoch (shard order and shuffle seeds) and the batch to start it at; reaches
        persistent DataLoader workers (shared memory), so call it before each epoch's iterator."""
        if not 0 <= start_batch <= self.batches_per_rank():
            raise ValueError(f"start_batch {start_batch} is outside [0, {self.batches_per_rank()}]")
        self._state[_EPOCH], self._state[_START_BATCH] = int(epoch), int(start_batch)

    def state_dict(self, batches_done: int) -> dict[str, int]:
        """The position after this rank consumed `batches_done` batches of the current epoch."""
        return {
            "epoch": self.epoch,
            "batches_done": int(batches_done),
            "workers": int(self._state[_WORKERS]),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "resampled": int(self.cfg.resampled),
            "samples_per_rank": self.samples_per_rank(),
            "mix": self.mix.key() if self.mix is not None else 0,  # the weighted quotas (0: none)
        }

    def load_state_dict(self, state: dict[str, int]) -> int:
        """Resume at a `state_dict` position; returns the batch of the epoch this rank starts at.

        Batch size, seed and mode must be those of the position. At the world size that wrote it
        the data must be too (the same samples per rank), and the resume is exact. At another world
        size (an elastic resize) the epoch continues after the same number of samples consumed
        over all ranks, rounded down to whole batches of the new split, each rank on its own new
        stream: the rest of the epoch is drawn as the new ranks draw it, not the samples the old
        ranks would have read."""
        start, same_world = resume_batch(state, self.state_dict(0), self.batches_per_rank())
        # at another split there is no per-worker position to check
        self._state[_EXPECT_WORKERS] = int(state.get("workers", 0)) if same_world else 0
        self.set_epoch(state["epoch"], start_batch=start)
        return start

    def _count(self, name: str, n: int = 1) -> None:
        self._counts[self._row, COUNTERS.index(name)] += n

    def metrics(self) -> dict[str, int]:
        """Counts so far over all workers: samples yielded from records, bad records, unreadable
        shard reads, planned records a shard did not hold, stand-in copies yielded."""
        return dict(zip(COUNTERS, (int(v) for v in self._counts[:, : len(COUNTERS)].sum(0))))

    def delivered(self) -> torch.Tensor:
        """(len(datasets) + 1,) int64: samples yielded so far over all workers, per dataset of
        `datasets` (the dataset a sample names), then those naming a dataset not among them."""
        return self._counts[:, len(COUNTERS) :].sum(0)

    # ---- reading ----
    def _failure(self) -> None:
        """Fail loudly when nothing decodes any more (resampling would otherwise spin forever)."""
        self._failures_in_a_row += 1
        if self._failures_in_a_row > self.cfg.max_consecutive_bad:
            raise RuntimeError(
                f"{self._failures_in_a_row} unreadable shards or bad samples in a row; see the "
                f"warnings above (data.max_consecutive_bad={self.cfg.max_consecutive_bad})"
            )

    def _planned(self, plan: Iterable, entry_of=lambda entry: entry) -> Iterator[tuple]:
        """(item, Fetch or None) along a planned shard order, `data.read_ahead` remote shards ahead."""

        def target(item) -> tuple[str, int, str]:
            entry = entry_of(item)
            return (entry.path, *fetch_limit(entry.bytes, self.cfg))

        return prefetched(plan, target, self.cfg.read_ahead)

    def _shard_refs(
        self, entry: ShardEntry, start: int = 0, stop: int | None = None, fetch: Fetch | None = None
    ) -> Iterator[RecordRef]:
        """References [start, stop) of one shard (headers only; from the fetched bytes of a remote
        one); counts a broken or unfetchable shard and the planned records it did not hold."""
        stop = entry.samples if stop is None else stop
        got, refs = 0, scan_shard(entry.path) if fetch is None else _fetched_refs(fetch)
        try:
            for ref in refs:
                if ref.index >= stop:
                    if stop == entry.samples:
                        raise ShardError(f"{entry.path}: holds more records than its manifest's {stop}")
                    break
                if ref.index >= start:
                    got += 1
                    yield ref
        except ShardError as e:
            self._count("bad_shards")
            log.warning("skipping the rest of an unreadable shard: %s", e)
            self._failure()
        finally:
            refs.close()
        if got < stop - start:
            self._count("missing_samples", stop - start - got)

    def _rng(self, worker: int, stream: str) -> random.Random:
        """An RNG independent for every (seed, epoch, rank, worker, stream)."""
        entropy = [self.seed, self.epoch, self.rank, worker, zlib.crc32(stream.encode())]
        return random.Random(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def _shuffled(self, slots: Iterator[Slot], worker: int, stream: str) -> Iterator[Slot]:
        if self.cfg.shuffle_buffer <= 1:
            return slots
        size = self.cfg.shuffle_buffer
        return wds.shuffle(size, initial=size, rng=self._rng(worker, stream))(slots)

    def _decode(self, slot: Slot) -> Sample | None:
        """The slot's sample, or None (counted and logged once) if it cannot be used."""
        if slot.ref is None:
            return None
        try:
            if slot.ref.problem:
                raise SchemaError(slot.ref.problem)
            sample = decode_sample(read_record(slot.ref), self.limits)
        except (SchemaError, OSError) as e:
            self._count("bad_samples")
            log.warning("skipping bad sample %s in %s: %s", slot.ref.key, slot.ref.shard, e)
            self._failure()
            return None
        self._failures_in_a_row = 0
        self._count("samples")
        if slot.padding:
            sample.meta = {**sample.meta, "padding": True}
        return sample

    # ---- resampled mode ----
    def _dataset_slots(self, dataset: str, worker: int) -> Iterator[Slot]:
        rng, entries = (
            self._rng(worker, f"shards:{dataset}"),
            [e for e in self.entries if e.dataset == dataset],
        )
        # the draws are the stream's planned order: drawing them ahead changes none of them
        draws = (rng.choice(entries) for _ in itertools.count())
        with closing(self._planned(draws)) as planned:
            for entry, fetch in planned:
                found = 0
                for ref in self._shard_refs(entry, fetch=fetch):
                    found += 1
                    yield Slot(ref)
                if not found:
                    self._failure()  # an empty or unreadable shard must not make this loop spin

    def _resampled(self, worker: int, quota: int, skip: int) -> Iterator[Sample]:
        datasets = sorted(self.weights)
        sources = [self._dataset_slots(d, worker) for d in datasets]
        streams = [self._shuffled(src, worker, f"shuffle:{d}") for src, d in zip(sources, datasets)]
        weights, rng = [self.weights[d] for d in datasets], self._rng(worker, "mix")
        slots = (next(streams[rng.choices(range(len(streams)), weights)[0]]) for _ in itertools.count())
        samples = (s for s in map(self._decode, itertools.islice(slots, skip, None)) if s is not None)
        try:
            yield from itertools.islice(samples, quota - skip)
        finally:  # stop the read-ahead of every stream now, not when garbage collected
            for source in sources:
                source.close()

    # ---- non-resampled mode ----
    def _share(self, worker: int, workers: int) -> tuple[int, int]:
        """Slots [start, stop) of the epoch that this rank's `worker` reads."""
        n = per_rank(self.entries, self.world_size)
        counts = worker_counts(n, workers, self.batch_size)
        start = self.rank * n + sum(counts[:worker])
        return start, start + counts[worker]

    def _epoch_slots(self, start: int, stop: int) -> Iterator[Slot]:
        """Slots [start, stop) of the epoch: the shard order's records, or the weighted mix's
        (one stream per dataset, interleaved; shard_mix.py)."""
        labels, segments = epoch_plan(self.mix, self.entries, self.seed, self.epoch, start, stop)
        streams = [self._slots(s) for s in segments]
        return streams[0] if labels is None else interleave(labels, streams)

    def _slots(self, segments: Iterable) -> Iterator[Slot]:
        with closing(self._planned(segments, attrgetter("entry"))) as planned:
            for seg, fetch in planned:
                found = 0
                for ref in self._shard_refs(seg.entry, seg.start, seg.stop, fetch):
                    found += 1
                    yield Slot(ref, seg.padding)
                yield from itertools.repeat(Slot(None, seg.padding), seg.stop - seg.start - found)

    def _stand_in(self, sample: Sample) -> Sample:
        self._count("repeated")
        return dataclasses.replace(copy.deepcopy(sample), meta={**sample.meta, "padding": True})

    def _borrow(self, after: int) -> Sample:
        """A good sample for a worker whose whole share was unusable: the next records of the
        epoch's order (wrapping around once)."""
        total = sum(e.samples for e in self.entries)
        with closing(self._epoch_slots(after, after + total)) as slots:
            for slot in slots:
                if (sample := self._decode(slot)) is not None:
                    return sample
        raise RuntimeError("no record of these shards decodes; see the warnings above")

    def _once(self, worker: int, workers: int, skip: int) -> Iterator[Sample]:
        start, stop = self._share(worker, workers)
        with closing(self._epoch_slots(start, stop)) as source:
            yield from self._once_from(source, worker, skip, stop)

    def _once_from(self, source: Iterator[Slot], worker: int, skip: int, stop: int) -> Iterator[Sample]:
        slots = itertools.islice(self._shuffled(source, worker, "shuffle"), skip, None)
        last, owed = None, 0
        for sample in map(self._decode, slots):
            if sample is None and last is None:
                owed += 1
                continue
            last = sample if sample is not None else last
            yield sample if sample is not None else self._stand_in(last)
            for _ in range(owed):
                yield self._stand_in(last)
            owed = 0
        if owed:
            last = self._borrow(stop)
            for _ in range(owed):
                yield self._stand_in(last)

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = _worker()
        if workers > self.max_workers:
            raise ValueError(
                f"DataLoader num_workers={workers} exceeds the reader's {self.max_workers} counter "
                f"rows; use num_workers <= data.loader_workers (or build_shard_dataset(max_workers=...))"
            )
        self._row, self._failures_in_a_row = worker + 1 if get_worker_info() else 0, 0
        expected, start_batch = int(self._state[_EXPECT_WORKERS]), int(self._state[_START_BATCH])
        if start_batch and expected and expected != workers:
            raise ValueError(
                f"the resume position was recorded with {expected} DataLoader workers, not {workers}"
            )
        self._state[_WORKERS] = workers
        # DataLoader asks worker 0 first on every iterator; after k batches the original order
        # continues with worker k % workers, so on resume worker w plays that worker's role.
        role = (worker + start_batch) % workers
        counts = worker_counts(self.samples_per_rank(), workers, self.batch_size)
        skip = min(counts[role], batches_consumed(start_batch, workers)[role] * self.batch_size)
        if self.cfg.resampled:
            stream = self._resampled(role, counts[role], skip)
        else:
            stream = self._once(role, workers, skip)
        with closing(stream):
            for sample in stream:
                self._counts[self._row, self._column.get(sample.dataset, self._column[_OTHER])] += 1
                yield sample


def _fetched_refs(fetch: Fetch) -> Iterator[RecordRef]:
    """References of a fetched shard, sharing its bytes (ShardError if it could not be fetched)."""
    yield from scan_bytes(fetch.uri, fetch.result())


def build_shard_dataset(
    cfg: DataConfig,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    shards: list[str] | None = None,
    batch_size: int = 1,
    max_workers: int | None = None,
    weighted: bool = False,
) -> ShardDataset:
    """The stream of `cfg.shards` (or `shards`) for this rank; `batch_size` = the DataLoader's.

    `weighted` matters without `data.resampled`: True composes every epoch by the datasets'
    weights (training streams), False reads every record once (validation, evaluation)."""
    paths = list(shards if shards is not None else cfg.shards)
    entries, sizes = resolve_shards(paths, cfg.shard_splits, cfg)
    entries = select_datasets(entries, cfg, str(paths))
    if not entries:
        raise ValueError(
            f"data.shards: no shards of split(s) {cfg.shard_splits} and dataset(s) "
            f"{cfg.datasets or 'any'} in {paths}; check the paths, data.shard_splits or data.datasets"
        )
    check_stored_sizes(sizes, cfg, {e.dataset for e in entries})
    if rank is None or world_size is None:
        rank, world_size = distributed_rank_world()
    return ShardDataset(entries, cfg, rank, world_size, seed, batch_size, max_workers, weighted)
