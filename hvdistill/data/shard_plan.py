"""Which records each rank and DataLoader worker reads in an epoch, and where a resumed one starts.

Pure arithmetic shared by every rank (no I/O), so all ranks agree without communicating:

- `worker_counts`: a rank's samples split over its DataLoader workers so that every worker
  yields whole batches. DataLoader batches inside each worker and hands batches out
  round-robin; a worker left with a partial batch would emit it short (or drop it with
  drop_last), so ranks would differ. Full batches are dealt round-robin and the one short
  batch (if the rank's count is not a multiple of the batch) goes to the next worker in turn,
  so it is the last batch the DataLoader yields.
- `batches_consumed`: after a rank consumed k batches, how many came from each worker (the
  same round-robin), which is where each worker resumes.
- `shard_order` / `slot_range`: the non-resampled epoch as a list of record slots: the shards
  in an order shuffled by (seed, epoch), every record once, then the same order again as
  padding (repeats) until every rank has `ceil(records / world)` slots; a rank's and a
  worker's share is a contiguous range of slots, possibly starting or ending inside a shard.
  A weighted epoch (shard_mix.py) has the same slots, filled with other records.
- `resume_batch`: the batch a rank resumes a saved position at, at the same world size or another.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

from hvdistill.data.shard_index import ShardEntry

log = logging.getLogger(__name__)
_SEED_STRIDE = 1_000_003  # mixes seed and epoch into one shard-order seed
RESUME_KEYS = ("batch_size", "world_size", "seed", "resampled", "samples_per_rank")  # must not change


@dataclass(frozen=True, slots=True)
class Segment:
    """Records [start, stop) of one shard, read as padding (repeats) or not."""

    entry: ShardEntry
    start: int
    stop: int
    padding: bool = False


def worker_counts(n: int, workers: int, batch: int) -> list[int]:
    """Samples per worker: n // batch full batches dealt round-robin, the rest to the next worker."""
    full, rest = divmod(n, batch)
    counts = [(full // workers + (w < full % workers)) * batch for w in range(workers)]
    if rest:
        counts[full % workers] += rest
    return counts


def batches_consumed(batches_done: int, workers: int) -> list[int]:
    """Batches each worker had delivered once the rank consumed `batches_done` (round-robin)."""
    return [batches_done // workers + (w < batches_done % workers) for w in range(workers)]


def shard_order(entries: list[ShardEntry], seed: int, epoch: int) -> list[ShardEntry]:
    """The epoch's shard order: the same on every rank, different every epoch."""
    order = sorted(entries, key=lambda e: e.path)
    random.Random(seed * _SEED_STRIDE + epoch).shuffle(order)
    return order


def per_rank(order: list[ShardEntry], world_size: int) -> int:
    """Slots every rank reads in a non-resampled epoch: ceil(records / world size)."""
    return math.ceil(sum(e.samples for e in order) / world_size)


def slot_range(order: list[ShardEntry], start: int, stop: int) -> list[Segment]:
    """Segments covering slots [start, stop): `order`'s records, then `order` again (padding)."""
    total = sum(e.samples for e in order)
    if total <= 0 or start >= stop:
        return []
    segments = []
    cycle = start // total
    pos = cycle * total
    while pos < stop:
        for entry in order:
            lo, hi = max(pos, start), min(pos + entry.samples, stop)
            if lo < hi:
                segments.append(Segment(entry, lo - pos, hi - pos, padding=cycle > 0))
            pos += entry.samples
            if pos >= stop:
                break
        cycle += 1
    return segments


def resume_batch(saved: dict[str, int], now: dict[str, int], batches_per_rank: int) -> tuple[int, bool]:
    """(the batch of the saved epoch a rank starts at, whether the world size is the saved one)
    for a position `saved` resumed by a reader whose position record is `now` (see
    ShardDataset.load_state_dict); ValueError naming what changed that must not."""
    same_world = saved.get("world_size") == now["world_size"]
    # other than the world size, and the samples per rank, which follow from it
    keys = [k for k in RESUME_KEYS if k != "world_size" and (same_world or k != "samples_per_rank")]
    changed = [k for k in keys if saved.get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k} was {saved.get(k)}, now {now[k]}" for k in changed)
        raise ValueError(f"cannot resume the data position: {diffs}")
    if saved.get("mix", now["mix"]) != now["mix"]:  # positions saved before weighted epochs have none
        log.warning(
            "the datasets' quotas of a weighted epoch changed since the position was saved "
            "(data.sources weights or the shards): the epoch goes on under the new ones, so "
            "some of its records may come twice or not at all"
        )
    start = int(saved["batches_done"])
    if not same_world:
        done = start * int(saved["batch_size"]) * int(saved["world_size"])  # samples, all ranks
        start = min(done // (now["batch_size"] * now["world_size"]), batches_per_rank)
    return start, same_world
