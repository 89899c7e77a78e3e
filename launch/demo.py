"""`hvdistill demo`: the whole chain on the synthetic world, each stage through its user command.

  1. `hvdistill synth`          a small synthetic dataset in the real nuScenes format
  2. `hvdistill inspect`        read it back through nuscenes-devkit (the nuScenes source)
  3. `hvdistill shard`          convert its train and val splits into WebDataset shards with Ray
  4. `hvdistill shard verify`   check every shard against the manifest (on Ray)
  5. `hvdistill pretrain --ray` hybrid-view distillation on Ray Train workers with DeepSpeed
                                (`dist.num_workers` CPU workers, `train.max_steps` steps), tracked
                                in MLflow, the 3D backbone exported
  6. the sweep it chains (`sweep.after_pretrain`): fine-tuning of that backbone and of random
     init at the configured label fractions and seeds on Ray Tune, then the report (mIoU table,
     label-efficiency plot) with the paths and the `mlflow ui` commands printed
Everything is written under `--out` (default demo-output/), or with `--storage s3://bucket/prefix`
the shards and the runs' storage (checkpoints, backbone) go to that object store, as on a
cluster without shared disks (docs/cluster.md); the config is configs/demo.yaml
plus any `key=value` overrides (e.g. `train.max_steps=20` for a quick look). Every stage runs
on one local Ray on 127.0.0.1 (or the cluster of `--address`), started once for the whole
chain. The last lines say where the report, the plot and the MLflow runs are.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hvdistill import storage
from hvdistill.config import Config, ConfigError, load_config


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"--- {time.perf_counter() - start:.1f} s", flush=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SystemExit(f"hvdistill demo: {what} failed (exit {rc})")


def run_data_stages(
    cfg: Config, out: Path, config_path: str, overrides: list[str], workers: int, shards: str
) -> str:
    """Stages 1-4 (the config and overrides passed through to each command) into the shard
    location `shards` (a directory or an object-store prefix); returns it."""
    from hvdistill.cli import main as hvdistill

    src = cfg.data.sources[0]
    root = Path(src.root)
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
    shard = ["shard", "--out", shards, "--workers", str(workers), "--no-progress"]
    _check(hvdistill([*shard, "--config", config_path, *overrides]), "shard")
    _done(t)
    t = _stage("4. verify the shards")
    _check(hvdistill(["shard", "verify", shards]), "shard verify")
    _done(t)
    return shards


def run_pretraining(cfg: Config, shards: str, address: str | None) -> tuple[Any, Any]:
    """Stage 5 (and 6): pretraining on Ray Train on the shards; with sweep.after_pretrain the
    label-efficiency sweep of the exported backbone against random init follows on the same Ray.
    (pretraining result, sweep result or None); SystemExit when either failed."""
    from launch.train import LaunchError, pretrain_then_sweep

    cfg = replace(cfg, data=replace(cfg.data, shards=[shards]))
    try:
        result, swept = pretrain_then_sweep(cfg, address)
    except LaunchError as exc:
        raise SystemExit(f"hvdistill demo: pretraining failed: {exc}") from exc
    if swept is not None and swept.failed:
        raise SystemExit(f"hvdistill demo: {len(swept.failed)} sweep trial(s) failed: {swept.failed}")
    return result, swept


RANDOM_TEACHER_NOTE = (
    "\nnote: this teacher is a random, untrained image network (model.image.random_init: true), so the\n"
    "table shows what contrastive pretraining on superpixels and LiDAR depth gives by itself, not an\n"
    "image model's knowledge; `hvdistill study configs/study.yaml` measures both, trained teacher vs\n"
    "random teacher (docs/results.md)."
)


def print_summary(out: Path, trained: Any, swept: Any) -> None:
    """Where everything is: the report's table and plot, the backbone and both MLflow runs."""
    from hvdistill.tracking import ui_command

    print("\n=== where to look ===")
    print(f"outputs:            {out}/")
    print(f"pretraining run:    {trained.run_dir}")
    print(f"run storage:        {trained.storage}")
    print(f"backbone:           {trained.backbone}")
    if trained.tracking_run_id:
        print(f"pretraining MLflow: {ui_command(trained.tracking_uri)}")
    if swept is None:
        return
    for key in ("summary_md", "plot", "per_class_md"):
        if key in swept.paths:
            print(f"{key + ':':20}{swept.paths[key]}")
    print(f"sweep MLflow:       {ui_command(swept.uri)}  (parent run {swept.parent_run_id})")
    summary = swept.paths.get("summary_md")
    if summary and Path(summary).is_file():
        print("\n" + Path(summary).read_text().rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvdistill demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for sharding")
    parser.add_argument(
        "--address", default=None, help="an existing Ray cluster for every stage; default: one local Ray"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="an object store for the shards and the runs' storage (s3://bucket/prefix; credentials "
        "and AWS_ENDPOINT_URL from the environment); default: all under --out",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_intermixed_args(argv)  # options before or after the key=value overrides
    out = Path(args.out)
    for d in [out, *out.absolute().parents]:  # refused before Ray starts, not by the first stage
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"--out: {d} is a file, not a directory; give another --out")
    try:
        n_sources = len(load_config(args.config, args.overrides, sections=()).data.sources)
        # every source of the demo config is read from the world written under --out
        roots = [f"data.sources.{i}.root={out / 'synthetic-nuscenes'}" for i in range(n_sources)]
        outputs = [f"train.output_dir={out / 'runs'}", f"finetune.output_dir={out / 'finetune'}"]
        if args.storage:  # the shards and every run's checkpoints and outputs on the object store
            outputs.append(f"dist.storage_path={storage.join(args.storage, 'runs')}")
        overrides = roots + outputs + args.overrides
        cfg = load_config(args.config, overrides)
        if cfg.sweep.after_pretrain:  # the sweep's config errors now, not after pretraining
            from launch.sweep import after_pretrain_config

            after_pretrain_config(cfg)
    except ConfigError as exc:
        print(f"hvdistill demo: {exc}", file=sys.stderr)
        return 2
    if args.storage and (problem := storage.location_problem(args.storage, "--storage")):
        print(f"hvdistill demo: {problem}", file=sys.stderr)
        return 2
    from launch.local_ray import ray_session
    from launch.train import session_resources

    need = session_resources(cfg)
    with ray_session(args.address, num_cpus=max(args.workers, need["num_cpus"]), num_gpus=need["num_gpus"]):
        return _run(cfg, out, args, overrides)


def _run(cfg: Config, out: Path, args: argparse.Namespace, overrides: list[str]) -> int:
    """Every stage, in order, on the Ray session `main` holds."""
    start = time.perf_counter()
    shards = storage.join(args.storage, "shards") if args.storage else str(out / "shards")
    shards = run_data_stages(cfg, out, args.config, overrides, args.workers, shards)
    t = _stage(
        f"5. pretrain on Ray Train: {cfg.dist.num_workers} workers, {cfg.train.max_steps} steps"
        + (" -> 6. label-efficiency sweep and report" if cfg.sweep.after_pretrain else "")
    )
    from hvdistill.precision import choose_image_dtype

    print(
        choose_image_dtype(cfg.precision, "cuda" if cfg.dist.use_gpu else "cpu").describe(
            cfg.precision.image_dtype
        )
    )
    trained, swept = run_pretraining(cfg, shards, args.address)
    _done(t)
    print_summary(out, trained, swept)
    if cfg.model.image.random_init:
        print(RANDOM_TEACHER_NOTE)
    print(f"\nhvdistill demo: all stages passed in {time.perf_counter() - start:.0f} s; outputs in {out}/")
    return 0
