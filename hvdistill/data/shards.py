"""Streaming training samples from WebDataset shards written by `hvdistill shard`.

`build_shard_dataset(cfg)` returns an IterableDataset of `Sample`s, exactly the samples
`prepare_sample(source.read(key))` gives (images after the JPEG coding they are stored with).
The pipeline: shard list (from manifests, directories or tar paths) -> shard order shuffled
with a seed shared by all ranks -> node split (rank / world size from torch.distributed or
explicit) -> DataLoader worker split -> tar iteration -> bounded shuffle buffer -> decoding
with the custom decoders of `hvdistill/data/schema.py` only (never webdataset's pickle-capable
defaults).

Modes:
- `resampled=False`: every sample of every shard exactly once per epoch across all ranks and
  workers (ranks may then differ in length by up to a shard).
- `resampled=True`: each rank/worker draws shards with replacement, datasets mixed with the
  weights of DataConfig.sources[*].weight, and a fixed number of samples per rank per epoch
  (DataConfig.epoch_samples, or the dataset size divided by the world size), so every rank
  runs the same number of steps.
Bad shards and samples are counted (`metrics()`, shared across DataLoader workers) and
skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from hvdistill.config import DataConfig
from hvdistill.data.sample import Sample
from hvdistill.data.schema import SCHEMA_VERSION, SchemaError, decode_sample

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_SEED_STRIDE = 1_000_003  # mixes epoch, rank and worker into distinct RNG seeds


def _manifest_shards(path: Path, splits: list[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("schema") != SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: shard schema {manifest.get('schema')!r} is not this reader's "
            f"{SCHEMA_VERSION!r}; re-shard the data with this version"
        )
    for source in manifest.get("sources", []):
        if not source.get("complete", True) and source.get("split") in splits:
            log.warning(
                "%s: %s %s was not completely sharded (an interrupted job?); re-run "
                "`hvdistill shard` to finish it",
                path,
                source.get("dataset"),
                source.get("split"),
            )
    urls: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for shard in manifest["shards"]:
        if shard.get("split", splits[0] if splits else "") not in splits:
            continue  # e.g. val shards sharing a directory with train shards
        urls.setdefault(shard["dataset"], []).append(str(path.parent / shard["name"]))
        counts[shard["dataset"]] = counts.get(shard["dataset"], 0) + int(shard["samples"])
    return urls, counts


def resolve_shards(
    paths: list[str], splits: list[str] | None = None
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """({dataset: shard paths}, {dataset: samples}) from manifests, shard dirs or .tar paths.

    Bare .tar paths carry no manifest; they are grouped under their dataset name prefix and
    their sample counts are unknown (0).
    """
    urls: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for entry in paths:
        path = Path(entry)
        manifest = path / MANIFEST if path.is_dir() else path
        if manifest.name == MANIFEST:
            if not manifest.exists():
                raise FileNotFoundError(f"{manifest}: no manifest; run `hvdistill shard` first")
            more, more_counts = _manifest_shards(manifest, list(splits or ["train"]))
        else:
            more, more_counts = {path.name.split("-")[0]: [str(path)]}, {}
        for dataset, shard_urls in more.items():
            urls.setdefault(dataset, []).extend(shard_urls)
        for dataset, n in more_counts.items():
            counts[dataset] = counts.get(dataset, 0) + n
    return urls, counts


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
        urls: dict[str, list[str]],
        counts: dict[str, int],
        cfg: DataConfig,
        rank: int,
        world_size: int,
        seed: int = 0,
    ):
        super().__init__()
        if not any(urls.values()):
            raise ValueError("no shards given; set data.shards to a shard dir or manifest.json")
        self.urls, self.counts, self.cfg = urls, counts, cfg
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self._failures_in_a_row = 0  # per worker process (each holds its own copy)
        weights = {s.name: s.weight for s in cfg.sources}
        self.weights = {d: float(weights.get(d, 1.0)) for d in urls}
        self._counters = {k: multiprocessing.Value("q", 0) for k in ("samples", "bad_samples", "bad_shards")}

    # ---- metrics ----
    def _count(self, name: str) -> None:
        with self._counters[name].get_lock():
            self._counters[name].value += 1

    def metrics(self) -> dict[str, int]:
        """{"samples", "bad_samples", "bad_shards"} decoded/skipped so far, all workers."""
        return {k: int(v.value) for k, v in self._counters.items()}

    def set_epoch(self, epoch: int) -> None:
        """Change the shard order and shuffle seeds (call before each epoch's iterator).

        DataLoader workers copy the dataset when they start: use persistent_workers=False (the
        default) so every epoch's workers see the new epoch."""
        self.epoch = int(epoch)

    # ---- pipeline pieces ----
    def _shard_error(self, exn: Exception) -> bool:
        self._count("bad_shards")
        self._failures_in_a_row += 1
        log.warning("skipping unreadable shard data: %s", exn)
        self._check_failures()
        return True

    def _check_failures(self) -> None:
        """Fail loudly when nothing decodes any more (resampling would otherwise spin forever)."""
        if self._failures_in_a_row > self.cfg.max_consecutive_bad:
            raise RuntimeError(
                f"{self._failures_in_a_row} unreadable shards or bad samples in a row; "
                f"see the warnings above (data.max_consecutive_bad="
                f"{self.cfg.max_consecutive_bad})"
            )

    def _decode(self, records: Iterator[dict[str, Any]]) -> Iterator[Sample]:
        for record in records:
            try:
                sample = decode_sample(record)
            except SchemaError as e:
                self._count("bad_samples")
                self._failures_in_a_row += 1
                log.warning(
                    "skipping bad sample %s in %s: %s", record.get("__key__"), record.get("__url__"), e
                )
                self._check_failures()
                continue
            self._failures_in_a_row = 0
            self._count("samples")
            yield sample

    def _rng(self, worker: int, stream: str) -> random.Random:
        """An RNG independent for every (seed, epoch, rank, worker, stream)."""
        entropy = [self.seed, self.epoch, self.rank, worker, zlib.crc32(stream.encode())]
        return random.Random(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def _samples(self, shard_urls: Iterator[str], worker: int) -> Iterator[Sample]:
        src = ({"url": u} for u in shard_urls)
        records = wds.tarfile_to_samples(handler=self._shard_error)(src)
        if self.cfg.shuffle_buffer > 1:
            records = wds.shuffle(
                self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=self._rng(worker, "shuffle")
            )(records)
        return self._decode(records)

    def _epoch_shards(self, worker: int, workers: int) -> list[str]:
        """This rank's and worker's shards of one pass: a partition of all shards."""
        shards = sorted(u for urls in self.urls.values() for u in urls)
        random.Random(self.seed * _SEED_STRIDE + self.epoch).shuffle(shards)  # same on all ranks
        return shards[self.rank :: self.world_size][worker::workers]

    def _resampled(self, dataset: str, worker: int) -> Iterator[str]:
        rng, urls = self._rng(worker, f"shards:{dataset}"), sorted(self.urls[dataset])
        while True:
            yield rng.choice(urls)

    def samples_per_rank(self) -> int:
        if self.cfg.epoch_samples > 0:
            return self.cfg.epoch_samples
        if not self.counts:
            raise ValueError(
                "data.epoch_samples: the sample count of these shards is unknown (bare "
                ".tar paths carry no manifest); give the shard directory or its "
                "manifest.json, or set data.epoch_samples=<samples per rank per epoch>"
            )
        return max(1, sum(self.counts.values()) // self.world_size)

    def _mixed(self, worker: int) -> Iterator[Sample]:
        datasets = sorted(self.urls)
        streams = [self._samples(self._resampled(d, worker), worker) for d in datasets]
        weights = [self.weights[d] for d in datasets]
        rng = self._rng(worker, "mix")
        while True:
            yield next(streams[rng.choices(range(len(streams)), weights)[0]])

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = _worker()
        if not self.cfg.resampled:
            yield from self._samples(iter(self._epoch_shards(worker, workers)), worker)
            return
        total = self.samples_per_rank()
        quota = total // workers + (1 if worker < total % workers else 0)
        for _, sample in zip(range(quota), self._mixed(worker)):
            yield sample


def build_shard_dataset(
    cfg: DataConfig,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    shards: list[str] | None = None,
) -> ShardDataset:
    """The training stream of `cfg.data.shards` (or `shards`) for this rank."""
    urls, counts = resolve_shards(list(shards if shards is not None else cfg.shards), cfg.shard_splits)
    if not urls:
        raise ValueError(
            f"data.shards: no shards of split(s) {cfg.shard_splits} in {shards or cfg.shards}; "
            f"check the paths or data.shard_splits"
        )
    if rank is None or world_size is None:
        rank, world_size = distributed_rank_world()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return ShardDataset(urls, counts, cfg, rank, world_size, seed)
