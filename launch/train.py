"""Pretraining on Ray: `hvdistill.train.run.run(cfg)` on `dist.num_workers` Ray Train (TorchTrainer) workers.

    hvdistill pretrain CONFIG [key=value ...] --ray [--address ADDR]

The driver (this process) prepares everything the workers must agree on before any starts:
the config is validated, its paths made absolute (Ray Train changes a worker's working
directory), `train.run_name` fixed (generated when empty) and the MLflow store created
(`prepare_tracking`: two workers migrating a new sqlite file at once crash). The config travels
as a plain dict (`to_dict` / `from_dict`). Each worker calls the same `run(cfg, hooks)` as
`hvdistill pretrain` without Ray; TorchTrainer has already set RANK/WORLD_SIZE/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT and a gloo (CPU) or nccl (GPU) process group, which `run` and
DeepSpeed reuse.

Failures (Ray Train v2, the default API of Ray 2.60): when a worker dies or raises, Ray stops
the whole worker group and starts a new one, at most `dist.max_failures` times
(`FailureConfig`). The new group calls `run` again with the same config; `run` finds the same
run directory (its name was fixed here) and resumes from the newest complete checkpoint in it,
and the MLflow run recorded there continues. The run directory is the one source of truth for
resuming: Ray registers a checkpoint only after `run` has written it, so Ray's record is never
newer. To Ray each checkpoint is reported as a pointer (a small directory holding
`pointer.json`: step and checkpoint path), so Ray lists the checkpoints in its storage
(`dist.storage_path`, default `<train.output_dir>/ray/<run name>`) without copying
gigabytes of engine state. `ray.train.report` is a barrier over all workers, so it is called
only where every rank passes: at each checkpoint and once at the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, from_dict, load_config, to_dict
from launch.local_ray import ray_session

RUN_ENTRY = "hvdistill.train.run:run"  # module:function called on every worker as f(cfg, hooks)
POINTER_FILE = "pointer.json"  # what a Ray checkpoint holds: {"step", "checkpoint", "run_dir"}
RAY_STORAGE_DIR = "ray"  # default dist.storage_path under train.output_dir


class LaunchError(RuntimeError):
    """The Ray run could not start or failed for good (after its restarts)."""


@dataclass
class RayTrainResult:
    """What a Ray run leaves: the run directory and the last report of rank 0."""

    run_dir: Path
    run_name: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)  # rank 0's last reported metrics
    tracking_run_id: str | None = None
    tracking_uri: str = ""
    checkpoint: Path | None = None  # the run directory's newest checkpoint at the end
    backbone: Path | None = None  # <run dir>/backbone.pt
    ray_storage: str = ""  # Ray Train's own run state (<storage_path>/<run name>)


def new_run_name() -> str:
    """A fresh, sortable run directory name: pretrain-<UTC time>-<6 hex>."""
    return f"pretrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _absolute(path: str, base: Path) -> str:
    """`path` resolved against `base` unless empty, absolute or a URI (s3://, gs://, ...)."""
    if not path or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def prepare_config(cfg: Config, base: Path | None = None) -> Config:
    """The config the workers get: paths absolute against `base` (default: cwd), run name fixed.

    Ray Train runs each worker in its own working directory, so a relative `train.output_dir`
    or `data.shards` entry would point somewhere else there; and a restarted worker group
    must find the run directory of the first, so the name is decided once, here.
    """
    base = Path.cwd() if base is None else base
    train = replace(
        cfg.train,
        output_dir=_absolute(cfg.train.output_dir, base),
        run_name=cfg.train.run_name or new_run_name(),
    )
    data = replace(cfg.data, shards=[_absolute(s, base) for s in cfg.data.shards])
    image = replace(cfg.model.image, weights=_absolute(cfg.model.image.weights, base))
    model = replace(cfg.model, image=image)
    dist = replace(cfg.dist, storage_path=_absolute(cfg.dist.storage_path, base))
    return replace(cfg, train=train, data=data, model=model, dist=dist)


def run_dir_of(cfg: Config) -> Path:
    """`<train.output_dir>/<train.run_name>` of a prepared config."""
    return Path(cfg.train.output_dir) / cfg.train.run_name


def storage_path_of(cfg: Config) -> str:
    """Where Ray Train keeps its run state: dist.storage_path or <train.output_dir>/ray."""
    return cfg.dist.storage_path or str(Path(cfg.train.output_dir) / RAY_STORAGE_DIR)


def _resolve_entry(entry: str) -> Callable[..., Any]:
    module, _, name = entry.partition(":")
    if not module or not name:
        raise ValueError(f"entry {entry!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), name)


class _Reporter:
    """The hooks a worker gives `run`: keeps the last metrics, reports each checkpoint to Ray."""

    def __init__(self, rank: int):
        self.rank = rank
        self.last: dict[str, float] = {}
        self.checkpoint: Path | None = None

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.last = {k: float(v) for k, v in metrics.items()}

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoint = Path(path).resolve()
        self.report(step, {"step": step, "checkpoint": str(self.checkpoint)})

    def report(self, step: int, pointer: dict[str, Any]) -> None:
        """`ray.train.report` on every rank (a barrier); rank 0 attaches `pointer` as Ray's checkpoint."""
        import ray.train

        metrics = {**self.last, "step": step}
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="hvdistill-pointer-") as tmp:
            (Path(tmp) / POINTER_FILE).write_text(json.dumps(pointer))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def read_pointer(checkpoint_dir: str | Path) -> dict[str, Any]:
    """What a Ray checkpoint of this module holds: {"step", "checkpoint"}, and at the end also
    "run_dir", "tracking_run_id", "backbone" and "final": true."""
    return json.loads((Path(checkpoint_dir) / POINTER_FILE).read_text())


def worker_main(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the config, call the run entry with hooks, report the end."""
    import ray.train

    cfg = from_dict(config["cfg"], RUN_SECTIONS["pretrain"])
    if not cfg.train.torch_threads:  # 0: one thread per CPU Ray reserved for this worker
        threads = max(1, int(cfg.dist.cpus_per_worker))
        cfg = replace(cfg, train=replace(cfg.train, torch_threads=threads))
    rank = ray.train.get_context().get_world_rank()
    restored = ray.train.get_checkpoint()
    if restored is not None and rank == 0:
        with restored.as_directory() as d:
            step = read_pointer(d)["step"]
        print(
            f"launch: restarted worker group; Ray's last registered checkpoint is step {step}; "
            f"the run resumes from the newest checkpoint in {run_dir_of(cfg)}",
            flush=True,
        )
    from hvdistill.train.run import RunHooks

    reporter = _Reporter(rank)
    hooks = RunHooks(on_log=reporter.on_log, on_checkpoint=reporter.on_checkpoint)
    result = _resolve_entry(config["entry"])(cfg, hooks)
    from hvdistill.train.checkpoint import latest_checkpoint

    newest = latest_checkpoint(result.run_dir)  # also one written before a restart
    final = {
        "step": int(result.steps),
        "checkpoint": str(newest) if newest else None,
        "run_dir": str(result.run_dir),
        "tracking_run_id": result.tracking_run_id,
        "backbone": str(result.backbone) if result.backbone else None,
        "final": True,
    }
    reporter.on_log(int(result.steps), result.last_metrics or reporter.last)
    reporter.report(int(result.steps), final)  # Ray's Result carries the last checkpoint's report


def session_resources(cfg: Config) -> dict[str, int]:
    """CPUs / GPUs a local Ray needs for this run's workers and, with `sweep.after_pretrain`, the
    chained sweep's concurrent trials (it runs on the same Ray)."""
    d, sw = cfg.dist, cfg.sweep
    cpus = d.num_workers * d.cpus_per_worker
    gpus = d.num_workers * d.gpus_per_worker if d.use_gpu else 0
    if sw.after_pretrain:
        cpus = max(cpus, sw.max_concurrent * sw.cpus_per_trial)
        gpus = max(gpus, sw.max_concurrent * sw.gpus_per_trial)
    return {"num_cpus": math.ceil(cpus), "num_gpus": math.ceil(gpus)}


def build_trainer(cfg: Config, entry: str = RUN_ENTRY) -> Any:
    """The TorchTrainer for a prepared config (resources, storage, restarts from `dist`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    d = cfg.dist
    resources: dict[str, float] = {"CPU": d.cpus_per_worker}
    if d.use_gpu:
        resources["GPU"] = d.gpus_per_worker
    backend = d.backend if d.backend != "auto" else ("nccl" if d.use_gpu else "gloo")
    return TorchTrainer(
        worker_main,
        train_loop_config={"cfg": to_dict(cfg), "entry": entry},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.train.run_name,
            storage_path=storage_path_of(cfg),
            failure_config=ray.train.FailureConfig(max_failures=d.max_failures),
            # as many pointers as the run keeps checkpoints
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )


def prepare_tracking_for(cfg: Config, run_dir: Path) -> str:
    """Create the MLflow store and experiment once, before workers open it; "" when tracking is off."""
    from hvdistill.tracking import prepare_tracking

    return prepare_tracking(cfg.tracking, run_dir)


def train_on_ray(cfg: Config, address: str | None = None, *, entry: str = RUN_ENTRY) -> RayTrainResult:
    """Run pretraining on `dist.num_workers` Ray Train workers; local Ray on 127.0.0.1 without `address`.

    `cfg` is validated for a pretraining run, its paths made absolute and its run name fixed;
    the run directory and the tracking store exist before the first worker starts. Each worker
    calls `entry` ("module:function", default `hvdistill.train.run:run`) as f(cfg, hooks) and
    returns its RunResult. Raises LaunchError when the run failed after `dist.max_failures` restarts.
    """
    from hvdistill.config import validate

    cfg = prepare_config(validate(cfg, RUN_SECTIONS["pretrain"]))
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = prepare_tracking_for(cfg, run_dir)
    print(f"launch: run directory {run_dir}", flush=True)
    with ray_session(address, **session_resources(cfg)):
        import ray.train

        try:
            result = build_trainer(cfg, entry).fit()
        except ray.train.TrainingFailedError as exc:
            raise LaunchError(f"the Ray run {cfg.train.run_name} failed for good: {exc}") from exc
    pointer: dict[str, Any] = {}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            pointer = read_pointer(d)
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "step"}
    return RayTrainResult(
        run_dir=Path(pointer.get("run_dir") or run_dir),
        run_name=cfg.train.run_name,
        steps=int(pointer.get("step", 0)),
        metrics=metrics,
        tracking_run_id=pointer.get("tracking_run_id"),
        tracking_uri=uri,
        checkpoint=Path(pointer["checkpoint"]) if pointer.get("checkpoint") else None,
        backbone=Path(pointer["backbone"]) if pointer.get("backbone") else None,
        ray_storage=f"{storage_path_of(cfg)}/{cfg.train.run_name}",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill pretrain --ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML diff over the default config, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. dist.num_workers=2")
    p.add_argument("--ray", action="store_true", help="run on Ray Train (this command's mode)")
    p.add_argument("--address", default=None, help="Ray cluster (auto, HOST:6379); default: local Ray")
    return p


def print_pretraining(result: RayTrainResult) -> None:
    """The run directory, backbone and the `mlflow ui` command of a finished run."""
    print(f"launch: finished {result.steps} steps; run directory {result.run_dir}")
    if result.backbone:
        print(f"launch: backbone {result.backbone}")
    if result.tracking_run_id:
        from hvdistill.tracking import ui_command

        print(f"launch: MLflow run {result.tracking_run_id}; to see it: {ui_command(result.tracking_uri)}")


def pretrain_then_sweep(cfg: Config, address: str | None = None) -> tuple[RayTrainResult, Any]:
    """Pretraining on Ray and, with `sweep.after_pretrain`, the sweep of its backbone (issue 11
    item 5) on the same Ray session: (pretraining result, SweepResult or None)."""
    with ray_session(address, **session_resources(cfg)):
        result = train_on_ray(cfg, address)
        print_pretraining(result)
        if not cfg.sweep.after_pretrain:
            return result, None
        from launch.sweep import run_after_pretrain

        named = replace(cfg, train=replace(cfg.train, run_name=result.run_name))
        return result, run_after_pretrain(named, result.run_dir, address)


def main(argv: list[str] | None = None) -> int:
    """`hvdistill pretrain CONFIG [key=value ...] --ray [--address ADDR]`."""
    args = build_parser().parse_intermixed_args(argv)  # options before or after the key=value overrides
    try:
        cfg = load_config(args.config, list(args.overrides), sections=RUN_SECTIONS["pretrain"])
        if cfg.sweep.after_pretrain:  # its config errors before pretraining, not after
            from launch.sweep import after_pretrain_config

            after_pretrain_config(cfg)
    except ConfigError as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)
        return 2
    try:
        _, swept = pretrain_then_sweep(cfg, args.address)
    except LaunchError as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)
        return 1
    if swept is None:
        return 0
    from launch.sweep import finish

    return finish(swept)


if __name__ == "__main__":
    sys.exit(main())
