"""Weighted epochs over several datasets for the non-resampled training reader (docs/mixing.md).

`data.sources[*].weight` -> share: each dataset's weight over the sum of the weights of the
datasets the reader streams (`shares`). A weighted epoch keeps the length of a plain one (every
record of every dataset: T slots, ranks balanced to ceil(T / world) as in shard_plan.py) and
gives dataset d `quota_d` of its slots: its share of T rounded by largest remainder, so the quotas
sum to T and each is within one of share_d x T (`quotas`).

`EpochMix` turns the quotas into records, pure arithmetic shared by every rank (no I/O):
- Records of a dataset: its records as an endless cycle (its shards in one order shuffled by
  (seed, dataset), each record once per turn). Epoch e takes positions [e x quota_d,
  (e + 1) x quota_d) of that cycle. A dataset with more records than its quota takes the next
  quota_d distinct records each epoch, so every record comes within ceil(records / quota)
  epochs; one with fewer repeats its records, each floor or ceil(quota / records) times per
  epoch. Over any number of epochs a dataset's records have come equally often, within one.
  (One order for all turns: a turn shuffled anew could repeat a record in the epoch that
  straddles two turns.) Which records an epoch holds changes with the epoch; their order within
  it comes from the interleaving below and the shuffle buffer.
- Slots: slot i of epoch e belongs to the dataset `labels(e)[i]`; the labels interleave the
  datasets evenly (the i-th of the times (j + u_d) / quota_d, u_d a random phase per (seed,
  epoch)), so any run of consecutive slots (a rank's, a worker's) holds each dataset in
  proportion to its quota, off by less than 1 + share_d x (D - 2) slots for D datasets (1 for
  two datasets, 2 for three). A rank's and a worker's range of slots is cut as in
  shard_plan.py; the slots of dataset d in a range are a contiguous part of d's window, read
  sequentially (`plan`), so a worker keeps one open stream per dataset. Slots past T (the
  ranks' balancing) repeat the epoch from its first slot, as padding.
When every quota equals its dataset's record count (one dataset, or weights in proportion to
the record counts) nothing is mixed: the reader keeps its plain epoch, every record once.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Generator, Iterator, Sequence

import numpy as np

from hvdistill.data.shard_index import ShardEntry
from hvdistill.data.shard_plan import Segment, shard_order, slot_range

_ORDER_TAG, _PHASE_TAG = 1, 2  # keep the seeds of the datasets' orders and of the phases apart


def shares(weights: dict[str, float]) -> dict[str, float]:
    """{dataset: weight / the sum of the weights} (`data.sources[*].weight`, all > 0)."""
    total = sum(weights.values())
    return {d: w / total for d, w in sorted(weights.items())}


def quotas(weights: dict[str, float], length: int) -> dict[str, int]:
    """{dataset: slots of an epoch of `length`}: share x length rounded by largest remainder
    (ties to the earlier name), so they sum to `length` and each is within 1 of share x length."""
    exact = {d: s * length for d, s in shares(weights).items()}
    counts = {d: math.floor(x + 1e-9) for d, x in exact.items()}  # 1e-9: 3 x (1/3) is 3, not 2
    rest = length - sum(counts.values())
    for d in sorted(exact, key=lambda d: counts[d] - exact[d])[: max(rest, 0)]:
        counts[d] += 1
    return counts


class EpochMix:
    """The composition of weighted non-resampled epochs; see the module docstring."""

    def __init__(self, entries: Sequence[ShardEntry], weights: dict[str, float], seed: int):
        self.datasets = tuple(sorted({e.dataset for e in entries}))
        self.seed = int(seed)
        self.orders = {d: self._order([e for e in entries if e.dataset == d], d) for d in self.datasets}
        self.records = {d: sum(e.samples for e in self.orders[d]) for d in self.datasets}
        self.length = sum(self.records.values())  # T: the slots of an epoch, as without mixing
        self.quotas = quotas({d: weights[d] for d in self.datasets}, self.length)
        empty = [d for d in self.datasets if self.quotas[d] and not self.records[d]]
        if empty:
            raise ValueError(
                f"data.sources: dataset(s) {empty} have a weight but no records in the shards, so "
                f"their share of the epoch cannot be read; leave them out with data.datasets"
            )
        self._labels: tuple[int, np.ndarray] | None = None

    @property
    def natural(self) -> bool:
        """Whether every dataset's quota is its record count (a plain epoch: nothing to mix)."""
        return self.quotas == self.records

    def key(self) -> int:
        """A fingerprint of the quotas (the resume position records it)."""
        text = ",".join(f"{d}:{self.quotas[d]}/{self.records[d]}" for d in self.datasets)
        return zlib.crc32(text.encode())

    def labels(self, epoch: int) -> np.ndarray:
        """(T,) int64: the dataset (index into `datasets`) of every slot of `epoch`."""
        if self._labels is not None and self._labels[0] == epoch:
            return self._labels[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, _PHASE_TAG]))
        phases = rng.random(len(self.datasets))  # (D,) in [0, 1)
        times, owners = [], []
        for i, d in enumerate(self.datasets):
            n = self.quotas[d]
            times.append((np.arange(n, dtype=np.float64) + phases[i]) / max(n, 1))  # (n,)
            owners.append(np.full(n, i, dtype=np.int64))
        time, owner = np.concatenate(times), np.concatenate(owners)  # (T,) each
        labels = owner[np.lexsort((owner, time))]  # (T,) by time, ties by dataset
        self._labels = (epoch, labels)
        return labels

    def plan(self, epoch: int, start: int, stop: int) -> tuple[np.ndarray, list[list[Segment]]]:
        """Slots [start, stop) of `epoch`: (labels (stop - start,) int64, for each dataset the
        segments of its slots in reading order). Slots at or past T are padding (repeats)."""
        labels = self.labels(epoch)
        parts, segments = [], [[] for _ in self.datasets]
        pos = start
        while pos < stop:
            lap, lo = divmod(pos, self.length)  # laps past the first: the ranks' padding
            hi = min(self.length, lo + stop - pos)
            before = np.bincount(labels[:lo], minlength=len(self.datasets))  # (D,)
            count = np.bincount(labels[lo:hi], minlength=len(self.datasets))  # (D,)
            for i, d in enumerate(self.datasets):
                first = epoch * self.quotas[d] + int(before[i])
                segments[i] += self._segments(d, first, first + int(count[i]), padding=lap > 0)
            parts.append(labels[lo:hi])
            pos += hi - lo
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), segments

    def _segments(self, dataset: str, first: int, stop: int, padding: bool) -> list[Segment]:
        """Positions [first, stop) of the dataset's endless cycle, as shard segments."""
        records, out = self.records[dataset], []
        pos = first
        while pos < stop:
            offset = pos % records
            take = min(stop - pos, records - offset)
            for seg in slot_range(self.orders[dataset], offset, offset + take):
                out.append(dataclasses.replace(seg, padding=padding))
            pos += take
        return out

    def _order(self, entries: list[ShardEntry], dataset: str) -> list[ShardEntry]:
        """The dataset's shards in its cycle's order (seeded by seed and dataset)."""
        entries = sorted(entries, key=lambda e: e.path)
        entropy = [self.seed, zlib.crc32(dataset.encode()), _ORDER_TAG]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return [entries[i] for i in rng.permutation(len(entries))]


def build_mix(
    entries: Sequence[ShardEntry], weights: dict[str, float], seed: int, weighted: bool
) -> EpochMix | None:
    """The weighted epochs of `entries`, or None where an epoch is plain (every record once): not
    `weighted`, or every quota equal to its dataset's record count."""
    mix = EpochMix(entries, weights, seed) if weighted else None
    return None if mix is None or mix.natural else mix


def epoch_plan(
    mix: EpochMix | None, entries: list[ShardEntry], seed: int, epoch: int, start: int, stop: int
) -> tuple[np.ndarray | None, list[list[Segment]]]:
    """Slots [start, stop) of a non-resampled epoch: (None, [segments of the shard order]) for a
    plain epoch (shard_plan.py), or the mix's (labels, segments of each dataset)."""
    if mix is None:
        return None, [slot_range(shard_order(entries, seed, epoch), start, stop)]
    return mix.plan(epoch, start, stop)


def interleave(labels: np.ndarray, streams: Sequence[Generator]) -> Iterator:
    """The next item of `streams[label]` for each label of `labels` (N,), in order; every stream
    is closed at the end (its read-ahead stops now, not when garbage collected)."""
    try:
        for label in labels.tolist():
            yield next(streams[label])
    finally:
        for stream in streams:
            stream.close()
