"""The frozen-feature probe's backbone passes and their cache (hvdistill/eval/probe.py runs them).

- `recalibrate_batchnorm`: every BatchNorm's running statistics reset, momentum None (the
  cumulative average over batches), one no-grad train-mode pass, then eval mode;
- `train_features`: each sampled training point's feature is its voxel's backbone output
  (`sample_points`: up to `probe.points_per_scan` labelled points inside the range per scan,
  drawn with a generator seeded by `finetune.seed` and the scan key, so batching does not matter);
- the cache in `<run dir>/probe_cache/`: `train_features.npy` (N, D) float32, `train_labels.npy`
  (N,) int64, `held_out/<batch>.npy` (V, D) voxel features in `probe.cache_dtype`, all written
  with allow_pickle=False, and `cache.json` last (the `cache_fingerprint` it was made with, the
  counts, each held-out batch's scan keys and voxel count). `read_cache` returns the record only
  when the fingerprint matches; `held_out_features` reads the batches back checking each one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hvdistill.config import Config
from hvdistill.eval.finetune import LOAD_REPORT_FILE, _check_bad
from hvdistill.eval.segmentation import SegmentationModel
from hvdistill.eval.voxels import SegBatch

log = logging.getLogger(__name__)

CACHE_DIR = "probe_cache"
CACHE_FILE = "cache.json"
HELD_OUT_DIR = "held_out"
TRAIN_FEATURES = "train_features.npy"  # (N, D) float32
TRAIN_LABELS = "train_labels.npy"  # (N,) int64
CACHE_VERSION = 1  # bump when the cache's layout or meaning changes


@torch.no_grad()
def recalibrate_batchnorm(
    module: nn.Module, forward: Callable[[SegBatch], Any], batches: Iterable[SegBatch]
) -> int:
    """Reset every BatchNorm of `module` and re-estimate its running statistics as the cumulative
    average (momentum None) over one train-mode pass of `forward` over `batches`; the momenta are
    restored and `module` is left in eval mode. Returns the batches seen (batches without voxels
    are skipped)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    seen = 0
    try:
        for batch in batches:
            if batch.batch_size and len(batch.voxel_coords):
                forward(batch)
                seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        module.eval()
    return seen


def voxel_features(model: SegmentationModel, batch: SegBatch, device: torch.device) -> torch.Tensor:
    """(V, D) float32 backbone features of a batch's voxels, on `device` ((0, D) without voxels)."""
    if not len(batch.voxel_coords):
        return torch.zeros((0, model.backbone.out_channels), device=device)
    moved = batch.to(device)
    return model.features(moved.voxel_coords, moved.voxel_features, moved.spatial_shape, moved.batch_size)


def sample_points(batch: SegBatch, per_scan: int, seed: int, ignore_index: int) -> torch.Tensor:
    """(S,) int64 indices of up to `per_scan` labelled points per scan that have a voxel, drawn
    without replacement by a generator seeded with (seed, crc32 of the scan key): the same points
    whatever the batching; ascending within each scan."""
    labels, p2v = batch.point_labels.numpy(), batch.point_to_voxel.numpy()  # (P,), (P,)
    usable = (labels != ignore_index) & (p2v >= 0)  # (P,)
    scan = batch.point_scan.numpy()  # (P,)
    chosen = []
    for b, key in enumerate(batch.keys):
        index = np.flatnonzero(usable & (scan == b))  # (n_b,)
        if len(index) > per_scan:
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            index = np.sort(rng.choice(index, per_scan, replace=False))
        chosen.append(index)
    return torch.from_numpy(np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64))


def train_features(
    cfg: Config, model: SegmentationModel, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(N, D) float32 features and (N,) int64 labels of the sampled training points, and counts."""
    ft = cfg.finetune
    feats, labels, counts = [], [], {"train_scans": 0, "bad_train_scans": 0}
    with torch.no_grad():
        for batch in loader:
            counts["train_scans"] += batch.batch_size
            counts["bad_train_scans"] += batch.bad
            points = sample_points(batch, cfg.probe.points_per_scan, ft.seed, ft.ignore_index)  # (S,)
            if not len(points):
                continue
            voxels = voxel_features(model, batch, device)  # (V, D)
            feats.append(voxels[batch.point_to_voxel[points].to(device)].cpu().numpy())  # (S, D)
            labels.append(batch.point_labels[points].numpy())  # (S,)
    seen = counts["train_scans"] + counts["bad_train_scans"]
    _check_bad(counts["bad_train_scans"], seen, ft.max_bad_fraction, "training")
    if not feats:
        raise RuntimeError("frozen probe: no training scan of the label split has a labelled point in range")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64), counts


def _keys_sha256(loader: DataLoader) -> str:
    return hashlib.sha256("\n".join(r.key for r in loader.dataset.refs).encode()).hexdigest()


def cache_fingerprint(cfg: Config, run_dir: Path, train: DataLoader, val: DataLoader) -> dict[str, Any]:
    """What the cached features depend on: a cache is reused only when this matches exactly."""
    ft, pr = cfg.finetune, cfg.probe
    report = json.loads((run_dir / LOAD_REPORT_FILE).read_text())
    return {
        "version": CACHE_VERSION,
        "random_init": not ft.backbone,
        "backbone_sha256": report.get("sha256", ""),  # the weights, wherever they were read from
        "seed": ft.seed,  # random init, and the sampled points
        "dataset": ft.dataset,
        "ignore_index": ft.ignore_index,
        "train_keys_sha256": _keys_sha256(train),
        "val_keys_sha256": _keys_sha256(val),
        "train_scans": len(train.dataset),
        "val_scans": len(val.dataset),
        "point_range": list(ft.point_range),
        "voxel_size": cfg.geometry.voxel_size,
        "model_lidar": dataclasses.asdict(cfg.model.lidar),
        "recalibrate_bn": pr.recalibrate_bn,
        "points_per_scan": pr.points_per_scan,
        "batch_size": train.batch_size,  # the recalibration's cumulative average is per batch
        "cache_dtype": pr.cache_dtype,
    }


def read_cache(cache_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The complete cache's record when it was made with `fingerprint`, else None."""
    try:
        record = json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        log.info("frozen probe: %s was made with other settings; computing the features again", cache_dir)
        return None
    return record


def held_out_features(
    model: SegmentationModel,
    loader: DataLoader,
    device: torch.device,
    cache_dir: Path,
    entries: list[dict[str, Any]],
    reuse: bool,
    dtype: str,
) -> Iterator[tuple[SegBatch, torch.Tensor]]:
    """(batch, (V, D) voxel features) over the held-out scans: read back from the cache when
    `reuse` (each batch checked against its `entries` item), else computed, written to the cache
    and described by an item appended to `entries`."""
    batches = 0
    for i, batch in enumerate(loader):
        batches += 1
        path = cache_dir / HELD_OUT_DIR / f"{i:06d}.npy"
        entry = {"keys": batch.keys, "voxels": len(batch.voxel_coords)}
        if reuse:
            if i >= len(entries) or entries[i] != entry:
                raise RuntimeError(
                    f"{cache_dir}: held-out batch {i} does not match the cache; remove the directory or set "
                    f"probe.reuse_cache=false"
                )
            feats = torch.from_numpy(np.load(path, allow_pickle=False)).to(device)  # (V, D)
        else:
            stored = voxel_features(model, batch, device).cpu().numpy().astype(dtype)  # (V, D)
            np.save(path, stored, allow_pickle=False)
            feats = torch.from_numpy(stored).to(device)  # scored as cached: a re-run scores the same
            entries.append(entry)
        yield batch, feats
    if reuse and batches != len(entries):
        raise RuntimeError(f"{cache_dir}: the cache holds more held-out batches than the split; remove it")
