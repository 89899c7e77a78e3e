"""Benchmark: pretraining samples/s and data wait, 1 vs 2 ranks, ZeRO-0 vs 2; checkpoint save and load time.

Throughput: a synthetic nuScenes world (800x450 images, 6 cameras) is sharded in this process
(sharding's own task function, no Ray) with images stored at 400x225; then `hvdistill pretrain`
runs on it in fresh processes (`torchrun --standalone` for 2 ranks), with configs/tiny.yaml,
the demo's 112x208 crops, one sample per rank and micro-batch (global batch = ranks), one
DataLoader worker per rank and a resampled epoch long enough for the whole run. samples/s and
the data-wait fraction (time blocked on the DataLoader / training wall time; evaluation and
checkpoints excluded) are the run's own metrics (`<run dir>/metrics.jsonl`), averaged over the
log windows after `--warmup` steps.

Checkpoints: one rank in this process, a DeepSpeed engine over the tiny and the paper-size
(default config, random ResNet-50 teacher) distiller after one optimizer step (so momentum
exists); median time of `--repeats` saves (fsynced) and loads, and the bytes written.

`--device cuda`: the throughput runs use the GPU (`dist.use_gpu=true`) at the paper config
with the image side in fp32 and in bf16, and report the peak GPU memory the run logged
(`memory/peak_mb`).

    .venv/bin/python -m benchmarks.bench_train [--steps 8] [--warmup 4] [--repeats 3]
        [--device cpu|cuda] [--skip-throughput] [--skip-checkpoints]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.peak_memory import ROOT

STORED = ["data.stored_image_width=400", "data.stored_image_height=225"]
CROPS = ["geometry.crop_height=112", "geometry.crop_width=208"]


def make_shards(workdir: Path, *overrides: str) -> Path:
    """Train and val shards of a 3 scene x 4 frame synthetic world, written without Ray
    (`overrides`: further data.* settings, e.g. data.shard_size_mb=...)."""
    from hvdistill.config import SourceConfig, SynthConfig, load_config
    from hvdistill.synthetic import write_nuscenes
    from sharding.job import shard_in_process

    root = write_nuscenes(
        workdir / "world",
        SynthConfig(scenes=3, frames_per_scene=4, image_width=800, image_height=450),
        version="v1.0-trainval",
        progress=False,
    )
    cfg = load_config(None, [*STORED, *overrides], sections=("data",))
    out = workdir / "shards"
    sources = [
        SourceConfig(name="nuscenes", root=str(root), version="v1.0-trainval", split=split)
        for split in ("train", "val")
    ]
    shard_in_process(sources, cfg.data, out)
    return out


def throughput(shards: Path, out: Path, name: str, ranks: int, args, extra: list[str], config: str) -> dict:
    """One `hvdistill pretrain` run; its mean samples/s and data-wait fraction after the warm-up."""
    overrides = [
        *STORED,
        f"data.shards=[{shards}]",
        f"train.output_dir={out}",
        f"train.run_name={name}",
        "train.micro_batch=1",
        f"train.global_batch={ranks}",
        f"train.max_steps={args.warmup + args.steps}",
        f"train.log_every={args.warmup}",
        "train.checkpoint_every=100000",
        "train.eval_every=100000",
        "train.progress=false",
        "data.loader_workers=1",
        "data.epoch_samples=1000",
        "tracking.enabled=false",
        *extra,
    ]
    entry = ["-m", "hvdistill.cli", "pretrain", config, *overrides]
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    start = time.perf_counter()
    done = subprocess.run([*launcher, *entry], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in lines if "samples_per_s" in m and m["step"] > args.warmup]
    result = {
        "samples_per_s": statistics.mean(m["samples_per_s"] for m in windows),
        "data_wait": statistics.mean(m["data_wait_fraction"] for m in windows),
        "wall_s": wall,
    }
    if any("memory/peak_mb" in m for m in windows):
        result["peak_mb"] = max(m.get("memory/peak_mb", 0.0) for m in windows)
    return result


def throughput_rows(args, workdir: Path) -> None:
    shards = make_shards(workdir)
    if args.device == "cuda":  # the published crops and model, a random teacher
        variants = [
            ("paper, image side fp32", 1, ["precision.image_dtype=float32"]),
            ("paper, image side bf16", 1, ["precision.image_dtype=bfloat16"]),
        ]
        config, base = "configs/paper.yaml", ["dist.use_gpu=true", "model.image.random_init=true"]
    else:
        variants = [
            ("1 rank, 1 thread, ZeRO-0", 1, ["train.torch_threads=1"]),
            ("1 rank, 2 threads, ZeRO-0", 1, ["train.torch_threads=2"]),
            ("2 ranks, 1 thread each, ZeRO-0", 2, ["train.torch_threads=1"]),
            ("2 ranks, 1 thread each, ZeRO-2", 2, ["train.torch_threads=1", "dist.zero_stage=2"]),
        ]
        config, base = "configs/tiny.yaml", CROPS
    print("| run | samples/s | data wait | wall (s) | peak GPU MB |")
    print("|---|---|---|---|---|")
    for i, (label, ranks, extra) in enumerate(variants):
        r = throughput(shards, workdir / "runs", f"v{i}", ranks, args, [*base, *extra], config)
        peak = f"{r['peak_mb']:,.0f}" if "peak_mb" in r else "-"
        print(
            f"| {label} | {r['samples_per_s']:.2f} | {r['data_wait']:.1%} | {r['wall_s']:.0f} | {peak} |",
            flush=True,
        )


def checkpoint_times(label: str, overrides: list[str], workdir: Path, repeats: int) -> str:
    """Save and load times of one engine's checkpoint (1 rank, ZeRO-0 and ZeRO-2)."""
    from hvdistill.config import load_config
    from hvdistill.losses.total import build_hybrid_view_loss
    from hvdistill.models.distiller import build_distiller
    from hvdistill.train.checkpoint import load_checkpoint, save_checkpoint
    from hvdistill.train.engine import build_engine, init_distributed, shutdown_distributed

    rows = []
    for zero in (0, 2):
        one_step = [
            "train.micro_batch=1",
            "train.global_batch=1",
            f"dist.zero_stage={zero}",
        ]  # no accumulation
        cfg = load_config(None if label == "paper" else "configs/tiny.yaml", [*overrides, *one_step])
        ctx = init_distributed(cfg)
        try:
            engine = build_engine(build_distiller(cfg, "cpu"), cfg, ctx, total_steps=10)
            loss_fn = build_hybrid_view_loss(cfg)
            params = [p for p in engine.module.parameters() if p.requires_grad]
            loss = sum((p.float() ** 2).sum() for p in params) * 1e-9  # any gradient: momentum gets made
            engine.backward(loss)
            assert engine.step(), "one micro-batch per step: this is an optimizer step"
            saves, loads = [], []
            for i in range(repeats):
                tic = time.perf_counter()
                path = save_checkpoint(workdir / f"ckpt-{label}-{zero}", i + 1, engine, loss_fn, {}, keep=1)
                saves.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                load_checkpoint(path, engine, loss_fn)
                loads.append(time.perf_counter() - tic)
            size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            n = sum(p.numel() for p in params) / 1e6
            rows.append(
                f"| {label} | {n:.1f} | ZeRO-{zero} | {size:,.0f} | {statistics.median(saves):.2f} | "
                f"{statistics.median(loads):.2f} |"
            )
        finally:
            shutdown_distributed(ctx)
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=4, help="steps left out (worker start, first iterations)")
    p.add_argument("--repeats", type=int, default=3, help="checkpoint saves/loads timed")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-checkpoints", action="store_true")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        if not args.skip_throughput:
            throughput_rows(args, workdir)
        if not args.skip_checkpoints:
            print("\n| model | trainable params (M) | engine | checkpoint MB | save (s) | load (s) |")
            print("|---|---|---|---|---|---|")
            tiny = ["precision.image_dtype=float32"]
            paper = ["model.image.random_init=true", "precision.image_dtype=float32"]
            print(checkpoint_times("configs/tiny.yaml", tiny, workdir, args.repeats), flush=True)
            print(checkpoint_times("paper", paper, workdir, args.repeats), flush=True)


if __name__ == "__main__":
    main()
