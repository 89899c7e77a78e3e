"""Sharding throughput (samples/s) with 1 and 2 Ray workers, and the scaling efficiency.

Generates (or reuses) a synthetic nuScenes-format world at 1600x900, starts one loopback Ray
with 2 CPUs, and shards the same source repeatedly into fresh directories, alternating 1 and 2
concurrent tasks (interleaved repeats; the first round warms up the workers and is dropped).
Prints medians, efficiency = throughput(2) / (2 * throughput(1)), shard sizes and bytes/sample.

    .venv/bin/python -m benchmarks.bench_sharding [--data /tmp/hvd-bench-nuscenes] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from hvdistill.config import DataConfig, SourceConfig, SynthConfig

VERSION = "v1.0-trainval"


def ensure_dataset(path: Path, scenes: int, frames: int, width: int, height: int) -> Path:
    """A synthetic nuScenes root at `path` (generated once, reused afterwards)."""
    if (path / VERSION / "sample.json").exists():
        return path
    from hvdistill.synthetic import write_nuscenes

    cfg = SynthConfig(scenes=scenes, frames_per_scene=frames, image_width=width, image_height=height)
    t = time.perf_counter()
    root = Path(write_nuscenes(path, cfg, version=VERSION))
    print(f"generated {scenes}x{frames} samples at {width}x{height} in {time.perf_counter() - t:.0f} s")
    return root


def source_configs(root: Path) -> list[SourceConfig]:
    """The nuScenes splits (train, val) in which the generated root has scenes."""
    from hvdistill.data.sources import build_source

    found = []
    for split in ("train", "val"):
        cfg = SourceConfig(name="nuscenes", root=str(root), version=VERSION, split=split)
        if build_source(cfg).chunks():
            found.append(cfg)
    if not found:
        raise SystemExit(f"{root}: no scene in the official train/val splits")
    return found


def source_config(root: Path) -> SourceConfig:
    return source_configs(root)[0]


def run_once(sources: list[SourceConfig], cfg: DataConfig, workers: int) -> tuple[float, dict]:
    """Shard every split into one fresh directory with at most `workers` concurrent tasks."""
    from sharding.job import run_sharding

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        for source in sources:
            manifest = run_sharding(source, cfg, Path(out), progress=False, max_in_flight=workers).manifest
        return time.perf_counter() - t, manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="/tmp/hvd-bench-nuscenes")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--task-samples", type=int, default=1, help="samples per Ray task")
    args = p.parse_args()
    root = ensure_dataset(Path(args.data), args.scenes, args.frames, args.width, args.height)
    sources = source_configs(root)
    cfg = DataConfig(shard_task_samples=args.task_samples)

    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    times: dict[int, list[float]] = {1: [], 2: []}
    manifest: dict = {}
    try:
        for r in range(args.repeats + 1):
            for workers in (1, 2):
                dt, manifest = run_once(sources, cfg, workers)
                if r > 0:
                    times[workers].append(dt)
                print(f"round {r} workers {workers}: {manifest['samples']} samples in {dt:.1f} s")
    finally:
        ray.shutdown()
    n = manifest["samples"]
    rate = {w: n / statistics.median(ts) for w, ts in times.items()}
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    print(f"\nsamples: {n} ({args.width}x{args.height}, 6 cameras), repeats: {args.repeats}")
    print(f"1 worker : {rate[1]:.3f} samples/s (median {statistics.median(times[1]):.1f} s)")
    print(f"2 workers: {rate[2]:.3f} samples/s (median {statistics.median(times[2]):.1f} s)")
    print(f"scaling efficiency: {rate[2] / (2 * rate[1]):.2f} (goal >= 0.8)")
    print(f"shards: {len(manifest['shards'])}, {total_bytes / n / 1024:.0f} KiB per sample")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
