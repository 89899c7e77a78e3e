"""`hvdistill demo`: the furthest pipeline that exists, run on the synthetic world.

Stages, each through the same entry point a user would call:
  1. `hvdistill synth`    a small synthetic dataset in the real nuScenes format
  2. `hvdistill inspect`  read it back through nuscenes-devkit (the nuScenes source)
  3. `hvdistill shard`    convert it into WebDataset shards with a local Ray cluster
  4. `hvdistill shard verify` and a streaming read of the shards
  5. augment + collate a batch and run the distiller and the hybrid-view loss, forward and
     backward, for a few SGD steps on the same samples (the loss falls; the pretraining loop
     with DeepSpeed and MLflow comes next)
Everything is written under `--out` (default demo-output/); the config is configs/demo.yaml
plus any `key=value` overrides.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hvdistill.config import Config, ConfigError, load_config


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"--- {time.perf_counter() - start:.1f} s", flush=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SystemExit(f"hvdistill demo: {what} failed (exit {rc})")


def run_data_stages(cfg: Config, out: Path, config_path: str, overrides: list[str], workers: int) -> Path:
    """Stages 1-4 (the config and overrides passed through to each command); returns the shard directory."""
    from hvdistill.cli import main as hvdistill

    src = cfg.data.sources[0]
    root, shards = Path(src.root), out / "shards"
    t = _stage(f"1. synthesise {cfg.synth.scenes} scenes x {cfg.synth.frames_per_scene} frames -> {root}")
    synth = ["synth", "--format", "nuscenes", "--version", src.version, "--out", str(root), "--no-progress"]
    _check(hvdistill([*synth, "--config", config_path, *overrides]), "synth")
    _done(t)
    t = _stage("2. read it back through nuscenes-devkit")
    for s in cfg.data.sources:
        inspect = [
            "inspect",
            "--source",
            s.name,
            "--root",
            s.root,
            "--version",
            s.version,
            "--split",
            s.split,
        ]
        _check(hvdistill(inspect), f"inspect ({s.split})")
    _done(t)
    splits = "+".join(s.split for s in cfg.data.sources)
    t = _stage(f"3. shard every data.sources entry ({splits}) with Ray ({workers} workers) -> {shards}")
    shard = ["shard", "--out", str(shards), "--workers", str(workers), "--no-progress"]
    _check(hvdistill([*shard, "--config", config_path, *overrides]), "shard")
    _done(t)
    t = _stage("4. verify the shards")
    _check(hvdistill(["shard", "verify", str(shards)]), "shard verify")
    _done(t)
    return shards


def read_batch(cfg: Config, shards: Path, batch_size: int) -> tuple[list, int]:
    """Stream the shards once (no resampling); return `batch_size` samples and the count seen."""
    from hvdistill.data.shards import build_shard_dataset

    cfg.data.shards = [str(shards)]
    cfg.data.resampled = False
    samples, seen = [], 0
    for sample in build_shard_dataset(cfg.data, rank=0, world_size=1):
        seen += 1
        if len(samples) < batch_size:
            samples.append(sample)
    return samples, seen


def run_model_stage(cfg: Config, shards: Path, steps: int) -> dict[str, float]:
    """Stage 5: a few SGD steps of distiller + loss on batches built from the shards."""
    from hvdistill.data.augment import augment_sample
    from hvdistill.data.collate import collate
    from hvdistill.losses.total import build_hybrid_view_loss
    from hvdistill.models.distiller import build_distiller
    from hvdistill.precision import choose_image_dtype

    t = _stage("5. stream the shards, augment + collate, distil (forward + backward)")
    samples, seen = read_batch(cfg, shards, cfg.train.micro_batch)
    print(
        f"streamed {seen} samples ({'+'.join(cfg.data.shard_splits)}) from {shards}; "
        f"batch of {len(samples)}: "
        f"{[s.key[:8] for s in samples]}"
    )
    torch.manual_seed(cfg.train.seed)
    print(choose_image_dtype(cfg.precision, "cpu").describe(cfg.precision.image_dtype))
    model = build_distiller(cfg, "cpu")
    loss_fn = build_hybrid_view_loss(cfg)
    params = [p for g in model.parameter_groups() for p in g.params]
    o = cfg.optim
    opt = torch.optim.SGD(
        params,
        lr=o.lr * cfg.train.global_batch / o.reference_batch if o.scale_lr else o.lr,
        momentum=o.momentum,
        dampening=o.dampening,
        weight_decay=o.weight_decay,
    )
    rng = np.random.default_rng(cfg.train.seed)
    model.train()
    terms = {}
    for step in range(steps):
        batch = collate([augment_sample(s, cfg.augment, cfg.geometry, rng) for s in samples], cfg.geometry)
        out = loss_fn(model(batch, with_bev=loss_fn.bev_active(0)), epoch=0)
        if not torch.isfinite(out.total):
            raise SystemExit(f"hvdistill demo: non-finite loss at step {step}: {out.as_floats()}")
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        terms = out.as_floats()
        print(
            f"step {step}: "
            + "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in terms.items())
            + f"  (superpixels {out.num_superpixels}, depth cells {out.num_depth_cells}, "
            f"BEV anchors {out.num_bev_anchors}, points {len(batch.points)}, "
            f"voxels {len(batch.voxel_coords)})"
        )
    _done(t)
    return terms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvdistill demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for sharding")
    parser.add_argument("--steps", type=int, default=8, help="distillation steps in stage 5")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        n_sources = len(load_config(args.config, args.overrides, sections=()).data.sources)
        # every source of the demo config is read from the world written under --out
        roots = [f"data.sources.{i}.root={out / 'synthetic-nuscenes'}" for i in range(n_sources)]
        overrides = roots + args.overrides
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"hvdistill demo: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    shards = run_data_stages(cfg, out, args.config, overrides, args.workers)
    run_model_stage(cfg, shards, args.steps)
    print(f"\nhvdistill demo: all stages passed in {time.perf_counter() - start:.0f} s; outputs in {out}/")
    return 0
