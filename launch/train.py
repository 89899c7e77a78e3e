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

Storage (no shared disk needed): the run's storage is `<dist.storage_path>/<run name>`
(default `dist.storage_path`: `<train.output_dir>/ray`, right on one node or with
`train.output_dir` on NFS; on a cluster without NFS an object store, `s3://bucket/prefix`).
At each checkpoint every rank stages its own part in a node-local directory and reports it
with `ray.train.report(checkpoint=Checkpoint.from_directory(...), checkpoint_dir_name=step-N)`:
Ray Train uploads every rank's directory into the one checkpoint `step-N` in the run's storage
and registers it once all ranks have reported; it keeps the newest `train.keep_checkpoints`.
Rank 0 also mirrors `config.yaml`, `tracking.json`, `metrics.jsonl` and, at the end,
`backbone.pt` / `backbone.json` there (hvdistill/train/outputs.py). Before step 1 every rank
writes and reads a probe there, so a node that cannot reach it stops the run at once.

Failures (Ray Train v2, the default API of Ray 2.60): when a worker dies or raises, Ray stops
the whole worker group and starts a new one, at most `dist.max_failures` times
(`FailureConfig`). The new group calls `run` again with the same config; each rank fetches the
newest intact checkpoint in the run's storage (which can be newer than the one
`ray.train.get_checkpoint()` reports, when a group died between the upload and Ray's
registration) into its node-local run directory and resumes from it, and the
MLflow run recorded in the storage's `tracking.json` continues. A fresh Ray (even after every
local file was lost) given the same `train.run_name` and `dist.storage_path` resumes the same
way: Ray Train restores the run's state from the storage. `train.resume=never` with checkpoints
already in the run's storage is refused: choose another `train.run_name`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hvdistill import storage
from hvdistill.config import RUN_SECTIONS, Config, ConfigError, from_dict, load_config, to_dict
from hvdistill.config.train import worker_range
from launch.local_ray import ray_session

RUN_ENTRY = "hvdistill.train.run:run"  # module:function called on every worker as f(cfg, hooks)
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
    storage: str = ""  # the run's storage: <dist.storage_path>/<run name> (a path or a URI)
    checkpoint: str = ""  # the newest checkpoint in the run's storage at the end
    backbone: str = ""  # <storage>/backbone.pt when exported


def new_run_name() -> str:
    """A fresh, sortable run directory name: pretrain-<UTC time>-<6 hex>."""
    return f"pretrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def prepare_config(cfg: Config, base: Path | None = None) -> Config:
    """The config the workers get: paths absolute against `base` (default: cwd), run name fixed.

    Ray Train runs each worker in its own working directory, so a relative `train.output_dir`
    or `data.shards` entry would point somewhere else there; and a restarted worker group
    must find the run directory of the first, so the name is decided once, here.
    """
    base = Path.cwd() if base is None else base
    train = replace(
        cfg.train,
        output_dir=storage.absolute(cfg.train.output_dir, base),
        run_name=cfg.train.run_name or new_run_name(),
    )
    data = replace(cfg.data, shards=[storage.absolute(s, base) for s in cfg.data.shards])
    image = replace(cfg.model.image, weights=storage.absolute(cfg.model.image.weights, base))
    model = replace(cfg.model, image=image)
    dist = replace(cfg.dist, storage_path=storage.absolute(cfg.dist.storage_path, base))
    return replace(cfg, train=train, data=data, model=model, dist=dist)


def run_dir_of(cfg: Config) -> Path:
    """`<train.output_dir>/<train.run_name>` of a prepared config."""
    return Path(cfg.train.output_dir) / cfg.train.run_name


def storage_path_of(cfg: Config) -> str:
    """Where Ray Train keeps its runs: dist.storage_path or <train.output_dir>/ray."""
    return cfg.dist.storage_path or str(Path(cfg.train.output_dir) / RAY_STORAGE_DIR)


def run_storage_of(cfg: Config) -> str:
    """The run's storage of a prepared config: <storage path>/<run name> (a path or a URI)."""
    return storage.join(storage_path_of(cfg), cfg.train.run_name)


def _resolve_entry(entry: str) -> Callable[..., Any]:
    module, _, name = entry.partition(":")
    if not module or not name:
        raise ValueError(f"entry {entry!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), name)


class _Reporter:
    """The hooks a worker gives `run`: keeps the last metrics, reports each staged checkpoint to Ray."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.last = {k: float(v) for k, v in metrics.items()}

    def on_checkpoint(self, step: int, staged: Path) -> None:
        """Every rank (`report` is a barrier): its staged part into the checkpoint `step-N` of the
        run's storage, deleted locally once uploaded; Ray registers it when all ranks reported."""
        import ray.train

        from hvdistill.train.checkpoint import step_name

        ray.train.report(
            {**self.last, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(str(staged)),
            checkpoint_dir_name=step_name(step),
            delete_local_checkpoint_after_upload=True,
        )


def worker_main(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the config, call the run entry with the run's storage."""
    import ray.train

    from hvdistill.train.run import RunHooks

    cfg = from_dict(config["cfg"], RUN_SECTIONS["pretrain"])
    if not cfg.train.torch_threads:  # 0: one thread per CPU Ray reserved for this worker
        threads = max(1, int(cfg.dist.cpus_per_worker))
        cfg = replace(cfg, train=replace(cfg.train, torch_threads=threads))
    restored = ray.train.get_checkpoint()
    latest = Path(restored.path).name if restored is not None else ""
    if latest and ray.train.get_context().get_world_rank() == 0:
        print(
            f"launch: restarted worker group; Ray's last registered checkpoint is {latest}; the run "
            f"resumes from the newest intact checkpoint in {run_storage_of(cfg)}",
            flush=True,
        )
    reporter = _Reporter()
    hooks = RunHooks(
        on_log=reporter.on_log,
        on_checkpoint=reporter.on_checkpoint,
        storage=run_storage_of(cfg),
    )
    _resolve_entry(config["entry"])(cfg, hooks)


def session_resources(cfg: Config) -> dict[str, int]:
    """CPUs / GPUs a local Ray needs for this run's workers and, with `sweep.after_pretrain`, the
    chained sweep's concurrent trials (it runs on the same Ray)."""
    d, sw = cfg.dist, cfg.sweep
    most = worker_range(d)[1]
    cpus = most * d.cpus_per_worker
    gpus = most * d.gpus_per_worker if d.use_gpu else 0
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
            num_workers=d.num_workers if isinstance(d.num_workers, int) else worker_range(d),
            use_gpu=d.use_gpu,
            resources_per_worker=resources,
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


def existing_checkpoints(cfg: Config) -> list[str]:
    """Names of the checkpoints already in the run's storage of a prepared config, newest first."""
    from hvdistill.train.resume import storage_candidates

    return [loc.name for loc in storage_candidates(storage.Location(run_storage_of(cfg)))]


def _result(cfg: Config, ray_result: Any, run_dir: Path, uri: str) -> RayTrainResult:
    """What the run left in its storage: its newest checkpoint, steps, MLflow run and backbone."""
    from hvdistill.train.checkpoint import BACKBONE, META
    from hvdistill.train.resume import META_LIMIT
    from hvdistill.train.run import TRACKING_FILE

    store = storage.Location(run_storage_of(cfg))
    checkpoint = store / Path(ray_result.checkpoint.path).name if ray_result.checkpoint else None
    steps, run_id = 0, None
    if checkpoint is not None:
        steps = int(json.loads((checkpoint / META).read_bytes(limit=META_LIMIT)).get("step", 0))
    if (store / TRACKING_FILE).is_file():
        run_id = json.loads((store / TRACKING_FILE).read_bytes(limit=META_LIMIT)).get("run_id")
    backbone = store / BACKBONE
    return RayTrainResult(
        run_dir=run_dir,
        run_name=cfg.train.run_name,
        steps=steps,
        metrics={k: v for k, v in (ray_result.metrics or {}).items() if k != "step"},
        tracking_run_id=run_id,
        tracking_uri=uri,
        storage=str(store),
        checkpoint=str(checkpoint) if checkpoint else "",
        backbone=str(backbone) if backbone.is_file() else "",
    )


def train_on_ray(cfg: Config, address: str | None = None, *, entry: str = RUN_ENTRY) -> RayTrainResult:
    """Run pretraining on `dist.num_workers` Ray Train workers; local Ray on 127.0.0.1 without `address`.

    `cfg` is validated for a pretraining run, its paths made absolute and its run name fixed;
    the run directory and the tracking store exist before the first worker starts. Each worker
    calls `entry` ("module:function", default `hvdistill.train.run:run`) as f(cfg, hooks). Raises
    LaunchError when the run failed after `dist.max_failures` restarts.
    """
    from hvdistill.config import validate

    cfg = prepare_config(validate(cfg, RUN_SECTIONS["pretrain"]))
    if cfg.train.resume == "never" and (found := existing_checkpoints(cfg)):
        raise ConfigError(
            [
                f"train.resume: never, but the run's storage {run_storage_of(cfg)} already holds "
                f"checkpoints of a run named {cfg.train.run_name} ({', '.join(sorted(found)[-3:])}); "
                f"give another train.run_name, or train.resume=auto to continue that run"
            ]
        )
    run_dir = run_dir_of(cfg)
    created = storage.first_missing(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = prepare_tracking_for(cfg, run_dir)
    print(f"launch: run directory {run_dir}; run storage {run_storage_of(cfg)}", flush=True)
    with ray_session(address, **session_resources(cfg)):
        import ray.train

        try:
            result = build_trainer(cfg, entry).fit()
        except ray.train.TrainingFailedError as exc:
            from hvdistill.train.loop import METRICS_FILE

            if created and not existing_checkpoints(cfg) and not (run_dir / METRICS_FILE).exists():
                shutil.rmtree(created, ignore_errors=True)  # nothing trained: leave no directory behind
            raise LaunchError(f"the Ray run {cfg.train.run_name} failed for good: {exc}") from exc
    return _result(cfg, result, run_dir, uri)


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
    print(f"launch: run storage {result.storage} (checkpoints, config, metrics, backbone)")
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
        return result, run_after_pretrain(named, result.storage, address)


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
    except ConfigError as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)
        return 1
    if swept is None:
        return 0
    from launch.sweep import finish

    return finish(swept)


if __name__ == "__main__":
    sys.exit(main())
