"""Benchmark: reading shards from local disk vs an S3 endpoint (0, 20, 100 ms per request), read-ahead 0 vs 2.

The same shards are read from local disk and from a real S3 endpoint on 127.0.0.1 (moto's
server, tests/helpers/s3.py, in this process; the data reach the reader over HTTP) with 0, 20
or 100 ms added to every request (a remote store's time to first byte; fetching a shard takes
two requests: its size, then one GET of every byte). The shards: a 3 scene x 4 frame synthetic
nuScenes world (800x450 images, 6 cameras) stored at 400x225 and cut at `--shard-mb` (2.5 MB:
2 samples a shard), so a shard is fetched every second sample: far more requests per sample
than 256 MB shards of ~180 samples would cost, the hard case for latency.

Two measurements, side by side in one run:
- reader: samples/s through the training's own stream (`build_stream` + `build_loader`: one
  DataLoader worker reading, augmenting and collating micro-batches of 1 at the demo's 112x208
  crops, resampled, shuffle buffer 4), `--samples` timed after `--skip` untimed; the rows run
  in `--repeats` interleaved rounds and the medians are reported (the machine is shared);
- pretraining: `hvdistill pretrain configs/tiny.yaml` (benchmarks/bench_train.py's `throughput`:
  1 rank, 1 torch thread, micro-batch 1, one DataLoader worker) reading the same shards;
  samples/s and the data-wait fraction (time blocked on the DataLoader / wall time) from the
  run's own metrics, after `--warmup` steps. The goal: data wait < 10% of step time with
  read-ahead at 20 and 100 ms.
Read-ahead hides the latency when `read_ahead` x (time to read a shard) >= (time to fetch one):
here a shard is 2 samples, ~0.2 s of reading, and a fetch ~0.25 s at 100 ms per request.

    .venv/bin/python -m benchmarks.bench_s3_reading [--samples 16] [--skip 4] [--repeats 3]
        [--steps 4] [--warmup 2] [--skip-training] [--data /tmp/hvd-bench-s3]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

STORED = ["data.stored_image_width=400", "data.stored_image_height=225"]
CROPS = ["geometry.crop_height=112", "geometry.crop_width=208"]
READER = ["data.loader_workers=1", "data.shuffle_buffer=4", "data.epoch_samples=1000"]
LATENCIES_MS = (0, 20, 100)


def make_shards(workdir: Path, shard_mb: float) -> Path:
    """Train and val shards of bench_train's world, cut at `shard_mb`, written without Ray (kept:
    a `--data` directory that holds them already is reused)."""
    if (workdir / "shards" / "manifest.json").exists():
        return workdir / "shards"
    from benchmarks.bench_train import make_shards as write_shards

    return write_shards(workdir, f"data.shard_size_mb={shard_mb}")


def upload(local: Path, prefix: str) -> str:
    from hvdistill.storage import Location

    for path in sorted(local.iterdir()):
        if path.is_file():  # the shards and manifest.json (not the sharding job's _state/)
            (Location(prefix) / path.name).upload(path)
    return prefix


def reader_rate(shards: str, read_ahead: int, samples: int, skip: int) -> float:
    """Samples/s of the training stream (one DataLoader worker) over `samples` after `skip`."""
    from hvdistill.config import load_config
    from hvdistill.train.data import build_loader, build_stream, close_loader

    overrides = [*STORED, *CROPS, *READER, f"data.shards=[{shards}]", f"data.read_ahead={read_ahead}"]
    overrides += ["train.micro_batch=1", "train.global_batch=1", "tracking.enabled=false"]
    cfg = load_config("configs/tiny.yaml", overrides)
    loader = build_loader(build_stream(cfg, "train", 0, 1), cfg, persistent=False)
    batches = iter(loader)
    try:
        for _ in range(skip):
            next(batches)
        start = time.perf_counter()
        for _ in range(samples):
            next(batches)
        return samples / (time.perf_counter() - start)
    finally:
        close_loader(batches)


def reader_rows(local: Path, remote: str) -> list[tuple[str, str, float, int]]:
    """(label, data.shards entry, added latency in s, read_ahead) of every reader row."""
    rows = [("local disk", str(local), 0.0, 0)]
    for ms in LATENCIES_MS:
        rows += [(f"S3 +{ms} ms, read_ahead {n}", remote, ms / 1000, n) for n in (0, 2)]
    return rows + [("S3 +100 ms, read_ahead 4", remote, 0.1, 4)]


def reader_table(server, local: Path, remote: str, args) -> None:
    """Median samples/s of every row over `--repeats` interleaved rounds."""
    rows = reader_rows(local, remote)
    rates: list[list[float]] = [[] for _ in rows]
    for _ in range(args.repeats):
        for i, (_, where, latency, read_ahead) in enumerate(rows):
            with server.slowed(latency):
                rates[i].append(reader_rate(where, read_ahead, args.samples, args.skip))
    print(f"\n| reader (median of {args.repeats}) | samples/s | vs local | min - max |")
    print("|---|---|---|---|")
    base = statistics.median(rates[0])
    for (label, *_), r in zip(rows, rates):
        med = statistics.median(r)
        print(f"| {label} | {med:.2f} | {med / base:.2f} | {min(r):.2f} - {max(r):.2f} |", flush=True)


def training_table(server, local: Path, remote: str, workdir: Path, args) -> None:
    from benchmarks.bench_train import throughput

    print("\n| pretraining (tiny, 1 rank) | samples/s | data wait | wall (s) |")
    print("|---|---|---|---|")
    rows = [("local disk", str(local), 0.0, 0), ("S3 +20 ms, read_ahead 2", remote, 0.02, 2)]
    rows += [(f"S3 +100 ms, read_ahead {n}", remote, 0.1, n) for n in (0, 2)]
    for i, (label, where, latency, read_ahead) in enumerate(rows):
        extra = [*CROPS, "train.torch_threads=1", "data.shuffle_buffer=4", f"data.read_ahead={read_ahead}"]
        with server.slowed(latency):
            r = throughput(where, workdir / "runs", f"r{i}", 1, args, extra, "configs/tiny.yaml")
        print(
            f"| {label} | {r['samples_per_s']:.2f} | {r['data_wait']:.1%} | {r['wall_s']:.0f} |", flush=True
        )


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16, help="reader: samples timed")
    p.add_argument("--skip", type=int, default=4, help="reader: samples read before timing")
    p.add_argument("--repeats", type=int, default=3, help="reader: interleaved rounds (medians)")
    p.add_argument("--steps", type=int, default=4, help="pretraining: measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2, help="pretraining: steps left out")
    p.add_argument("--shard-mb", type=float, default=2.5, help="shard size cut when writing")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--data", type=Path, default=None, help="keep the world and shards here (reused)")
    args = p.parse_args()
    from tests.helpers.s3 import S3Server, s3_environment

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    server = S3Server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, s3_environment(server):
            workdir = Path(tmp)
            local = make_shards(args.data or workdir, args.shard_mb)
            remote = upload(local, f"s3://{server.new_bucket()}/shards")
            tars = sorted(local.glob("*-train-*.tar"))
            print(f"{len(tars)} train shards of {tars[0].stat().st_size / 2**20:.1f} MB")
            reader_table(server, local, remote, args)
            if not args.skip_training:
                training_table(server, local, remote, workdir, args)
    finally:
        server.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
