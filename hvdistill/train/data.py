"""Training and validation batches per rank: shard reader, augmentation and collate in DataLoader workers.

`BatchStream` wraps the rank's `ShardDataset` (built in the training process once the process
group exists) and yields collated `Batch`es of `train.micro_batch` samples, so reading,
augmentation and collate all run in the DataLoader workers. Persistent workers are fine: the
reader keeps its epoch and resume position in shared memory, and so does the stream.

Augmentation randomness: every micro-batch gets its own numpy Generator seeded by
SeedSequence([train.seed, epoch, rank, index]), index = the batch's position in this rank's epoch.
A DataLoader hands out worker batches round-robin, so worker w of n yields the batches
start + w, start + w + n, ... (start = the resume position); the index therefore does not depend
on the number of workers or on how the run was interrupted, and a resumed run augments exactly
as an uninterrupted one. The loader has its own torch Generator, so creating it draws nothing from
the global RNG (dropout masks stay identical across a resume).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from hvdistill.batch import Batch
from hvdistill.config import Config, DataConfig
from hvdistill.data.augment import augment_sample
from hvdistill.data.collate import collate
from hvdistill.data.shard_index import (
    MANIFEST_MAX_BYTES,
    entry_location,
    manifest_location,
    resolve_shards,
    select_datasets,
)
from hvdistill.data.shards import ShardDataset, build_shard_dataset

_EPOCH, _START = range(2)


class BatchStream(IterableDataset):
    """Collated, augmented micro-batches of one rank's shard stream (see the module docstring)."""

    def __init__(self, reader: ShardDataset, cfg: Config, rank: int, augment: bool = True):
        super().__init__()
        self.reader, self.rank, self.augment = reader, int(rank), augment
        self.micro_batch, self.seed = reader.batch_size, int(cfg.train.seed)
        # validation: no random augmentation (whole images resized to the crop size)
        self.augment_cfg = cfg.augment if augment else replace(cfg.augment, enabled=False)
        self.geometry = cfg.geometry
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, start batch

    def batches_per_epoch(self) -> int:
        """Micro-batches this rank yields per epoch (equal on every rank)."""
        return self.reader.batches_per_rank()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Epoch and first batch of the next iterator (reaches persistent workers)."""
        self.reader.set_epoch(epoch, start_batch)
        self._state[_EPOCH], self._state[_START] = int(epoch), int(start_batch)

    def position(self, epoch: int, batches_done: int) -> dict[str, int]:
        """The reader's resume record for `batches_done` batches of `epoch` (plain ints)."""
        return {
            **self.reader.state_dict(batches_done),
            "epoch": int(epoch),
            "batches_done": int(batches_done),
        }

    def load_position(self, position: dict[str, int]) -> int:
        """Continue at a `position` record, written at this world size or another (refused if the
        batch size, seed or data changed); returns the batch of the epoch this rank starts at."""
        start = self.reader.load_state_dict(position)
        self._state[_EPOCH], self._state[_START] = int(position["epoch"]), start
        return start

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank, index]))

    def _collate(self, samples: list, epoch: int, index: int) -> Batch:
        rng = self._rng(epoch, index)
        return collate(
            [augment_sample(s, self.augment_cfg, self.geometry, rng) for s in samples], self.geometry
        )

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self._state[_EPOCH]), int(self._state[_START])
        pending: list = []
        k = 0
        for sample in self.reader:
            pending.append(sample)
            if len(pending) == self.micro_batch:
                yield self._collate(pending, epoch, start + worker + k * workers)
                pending, k = [], k + 1
        if pending:  # the short last batch of a non-resampled (validation) epoch
            yield self._collate(pending, epoch, start + worker + k * workers)


def has_split(data: DataConfig, split: str) -> bool:
    """Whether `data.shards` hold shards of `split` (of the selected datasets)."""
    entries, _ = resolve_shards(list(data.shards), [split], data)
    return bool(select_datasets(entries, data, str(data.shards)))


def build_stream(cfg: Config, split: str, rank: int, world_size: int) -> BatchStream:
    """The rank's stream of `split`: "train" resampled as configured, and without resampling each
    epoch composed by the datasets' weights (docs/mixing.md); "val" every record once."""
    data: DataConfig = cfg.data
    if split == "val":
        data = replace(data, shard_splits=["val"], resampled=False)
    reader = build_shard_dataset(
        data,
        rank=rank,
        world_size=world_size,
        seed=cfg.train.seed,
        batch_size=cfg.train.micro_batch,
        max_workers=max(1, cfg.data.loader_workers),
        weighted=split == "train",
    )
    return BatchStream(reader, cfg, rank, augment=split == "train")


def build_loader(stream: BatchStream, cfg: Config, persistent: bool = True) -> DataLoader:
    """A DataLoader whose workers (`data.loader_workers`, persistent by default) read, augment and
    collate whole micro-batches. On CUDA runs (`dist.use_gpu`) batches arrive in pinned memory, so
    the loop's copy to the GPU is asynchronous; CPU runs pin nothing."""
    workers = cfg.data.loader_workers
    extra = {"prefetch_factor": cfg.data.prefetch_factor} if workers > 0 else {}
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=cfg.dist.use_gpu,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
        **extra,
    )


def close_loader(loader: DataLoader | Iterator | None) -> None:
    """Stop a DataLoader's (or iterator's) worker processes now rather than when garbage collected
    (a traceback that keeps the loop's frames alive would otherwise keep them running)."""
    iterator = getattr(loader, "_iterator", loader)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if isinstance(loader, DataLoader):
        loader._iterator = None


def manifest_hash(data: DataConfig) -> str:
    """sha256 over the manifests (bytes) of `data.shards`, or the name and size of a bare .tar;
    local or on an object store alike (hvdistill/storage.py)."""
    h = hashlib.sha256()
    for entry in data.shards:
        location = entry_location(entry)
        manifest = manifest_location(location)
        h.update(entry.encode() + b"\0")
        if manifest is not None and manifest.is_file():
            h.update(manifest.read_bytes(MANIFEST_MAX_BYTES))
        elif location.is_file():
            h.update(f"{location.name}:{location.size()}".encode())
    return h.hexdigest()
