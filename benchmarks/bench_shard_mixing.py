"""Shuffle quality of the two shard layouts: distinct scenes per batch of 8 through the reader.

A nuScenes-format dataset of N scenes x 40 keyframes is built like in bench_plans.py (tables of
one tiny synthetic scene replicated with fresh tokens and scene names, sharing its small files)
and sharded twice by the real Ray job:
- per scene (`data.shard_shuffle=false`): a unit per scene, one 40-sample shard each (a nuScenes
  scene is ~57 MB of shards, so the default 256 MB never splits it);
- shuffled (`data.shard_shuffle=true`): units of `--unit` keys of the hash-ordered split, one shard
  each (180 samples ~ what 256 MB holds of nuScenes at ~1.4 MB per sample).
Each is then read for one epoch by the training reader (`data.resampled=true`, shuffle buffer
`data.shuffle_buffer` = 256, a torch DataLoader with 2 workers and batches of 8), and the scenes
of every batch are counted. The ideal is sampling 8 of all samples without replacement.

    .venv/bin/python -m benchmarks.bench_shard_mixing [--scenes 100] [--unit 180]
                                                      [--data /tmp/hvd-bench-plans]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.bench_plans import FRAMES, base_scene, replicate, source_config

BATCH = 8


def shard(root: Path, out: Path, shuffle: bool, unit: int) -> dict:
    """Shard the dataset with the real job (resumes if `out` already holds it)."""
    import ray

    from hvdistill.config import DataConfig
    from sharding.job import init_ray, run_sharding

    cfg = DataConfig(shard_shuffle=shuffle, shard_task_samples=unit if shuffle else 256, shard_size_mb=1024)
    started = init_ray(None, os.cpu_count() or 1)
    try:
        return run_sharding(source_config(root), cfg, out, progress=False).manifest
    finally:
        if started:
            ray.shutdown()


def scenes_per_batch(out: Path, workers: int, buffer: int) -> np.ndarray:
    """Distinct scenes in each batch of one resampled epoch through DataLoader workers."""
    from torch.utils.data import DataLoader

    from hvdistill.config import DataConfig, SourceConfig
    from hvdistill.data.shards import build_shard_dataset

    cfg = DataConfig(
        sources=[SourceConfig(name="nuscenes")], resampled=True, shuffle_buffer=buffer, loader_workers=workers
    )
    dataset = build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(out)], batch_size=BATCH)
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        num_workers=workers,
        collate_fn=lambda batch: len({s.meta["scene"] for s in batch}),
    )
    return np.asarray(list(loader))


def ideal(scenes: int, frames: int, trials: int = 20000) -> float:
    """Mean distinct scenes of 8 samples drawn without replacement (Monte Carlo, fixed seed)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(scenes), frames)
    return float(np.mean([len(set(rng.choice(labels, BATCH, replace=False))) for _ in range(trials)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--unit", type=int, default=180, help="samples per unit (= per shard) when shuffled")
    p.add_argument("--buffer", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="/tmp/hvd-bench-plans")
    args = p.parse_args()
    data = Path(args.data)
    root = replicate(base_scene(data), args.scenes, data / f"scenes-{args.scenes}")
    print(f"{args.scenes} scenes x {FRAMES} keyframes; reader: buffer {args.buffer}, {args.workers} workers")
    for shuffle in (False, True):
        name = "shuffled" if shuffle else "per scene"
        out = data / f"shards-{args.scenes}-{'mixed' if shuffle else 'scene'}-{args.unit}"
        manifest = shard(root, out, shuffle, args.unit)
        sizes = [s["samples"] for s in manifest["shards"]]
        counts = scenes_per_batch(out, args.workers, args.buffer)
        hist = np.bincount(counts, minlength=BATCH + 1)[1:]
        shape = f"{len(sizes)} shards of {np.mean(sizes):.0f} samples (min {min(sizes)}, max {max(sizes)})"
        print(
            f"{name:>9}: {shape};"
            f" {len(counts)} batches: distinct scenes per batch of {BATCH}: mean {counts.mean():.2f}, "
            f"median {np.median(counts):.0f}, min {counts.min()}; histogram 1..{BATCH}: {hist.tolist()}"
        )
    print(f"    ideal: {ideal(args.scenes, FRAMES):.2f} (8 of all samples without replacement)")
    print(f"nuScenes train (700 scenes x ~40): ideal {ideal(700, 40):.2f}")


if __name__ == "__main__":
    main()
