"""`run(cfg)`: one pretraining process, alike under `hvdistill pretrain`, torchrun/deepspeed and Ray Train.

Order: process group (reused, from the launcher's environment, or a 1-rank loopback gloo group)
-> the DeepSpeed config and precision checked (a config error leaves nothing behind) -> run
directory `<train.output_dir>/<train.run_name or pretrain-<UTC time>-<6 hex>>` (rank 0 decides,
every rank gets it; rank 0 holds its lock, hvdistill/dirlock.py) -> every rank probes the run's
storage (hvdistill/train/outputs.py: the run directory, or under Ray Train `hooks.storage`) ->
the resume decision (hvdistill/train/resume.py: the newest intact checkpoint when
`train.resume=auto`, damaged ones skipped with a warning) -> tracking (rank 0 a real MLflow
tracker continuing the run id of `tracking.json` or of the checkpoint, other ranks a null one)
-> `config.yaml` (resolved) and `deepspeed.json`, mirrored into the run's storage -> data,
model, loss, engine -> restore -> the loop (hvdistill/train/loop.py) -> `backbone.pt` +
`backbone.json` (mirrored) -> barrier, and the group destroyed only if `run` created it. A start
that fails before anything was trained removes the run directory it created.

`main` is `hvdistill pretrain CONFIG [key=value ...]` (one process, or one rank under
`torchrun`/`deepspeed`); it ends by printing the MLflow run id and the `mlflow ui` command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from hvdistill import dist
from hvdistill.config import RUN_SECTIONS, Config, ConfigError, flatten, load_config, to_dict
from hvdistill.dirlock import OutputLocked, directory_lock
from hvdistill.losses.total import build_hybrid_view_loss
from hvdistill.models.distiller import build_distiller
from hvdistill.precision import resolve_image_dtype, resolved_precision
from hvdistill.storage import Location, StorageError, first_missing, write_atomic
from hvdistill.train import checkpoint as ckpt
from hvdistill.train.data import build_loader, build_stream, close_loader, has_split, manifest_hash
from hvdistill.train.engine import (
    DistContext,
    build_engine,
    check_precision,
    deepspeed_config,
    fit_batch_to_world,
    grad_accumulation,
    init_distributed,
    shutdown_distributed,
)
from hvdistill.train.loop import METRICS_FILE, LoopState, TrainJob, train
from hvdistill.train.outputs import (
    StorageProbeError,
    fetch_missing,
    mirror_files,
    previous_run_id,
    probe_storage,
    trim_metrics,
)
from hvdistill.train.resume import CheckpointError, choose_checkpoint, shared_candidates, storage_candidates
from hvdistill.train.schedule import resolved_schedule

log = logging.getLogger(__name__)
TRACKING_FILE = "tracking.json"
START_FILES = ("config.yaml", "deepspeed.json", TRACKING_FILE)  # mirrored into the run's storage
END_FILES = (ckpt.BACKBONE, ckpt.BACKBONE_META, METRICS_FILE)


@dataclass
class RunHooks:
    """What a launcher adds to a run without the loop importing it."""

    on_log: Callable[[int, dict[str, float]], None] | None = None  # (step, metrics), every rank
    # (step, checkpoint dir), every rank; with `storage` the dir is this rank's staged part, which
    # the launcher persists into the run's storage
    on_checkpoint: Callable[[int, Path], None] | None = None
    # the run's storage (Ray Train: <dist.storage_path>/<run name>, a path or an object store):
    # checkpoints are staged per rank and persisted by `on_checkpoint`, resumed from there, and
    # the run files are mirrored into it (hvdistill/train/outputs.py); "" = the run directory,
    # shared by every rank, holds everything
    storage: str = ""


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    last_metrics: dict[str, float]
    tracking_run_id: str | None
    backbone: Path | None  # <run dir>/backbone.pt when exported
    tracking_uri: str = ""


def new_run_name() -> str:
    """A fresh, sortable run directory name: pretrain-<UTC time>-<6 hex> (launch/'s format)."""
    return f"pretrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


LAUNCHER_RUN_ID = "TORCHELASTIC_RUN_ID"  # torchrun's run id, the same for a restart of its workers


def launcher_run_name(world_size: int) -> str:
    """The run name a launcher fixes (torchrun's run id, as `pretrain-<id>`), or "" without one.

    A multi-rank launch without a fixed name would start a new run at each restart, so it is
    refused with the fix."""
    run_id = os.environ.get(LAUNCHER_RUN_ID, "")
    if run_id and run_id != "none":
        return "pretrain-" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:80]
    if world_size > 1:
        raise ConfigError(
            [
                "train.run_name: empty in a multi-rank launch without a launcher run id, so a restarted "
                "launch would start a new run instead of resuming; set train.run_name=<name> (or launch "
                f"with torchrun --rdzv-id <id>, which sets {LAUNCHER_RUN_ID})"
            ]
        )
    return ""


def resolve_run_dir(cfg: Config, ctx: DistContext) -> tuple[Path, Path | None]:
    """(<train.output_dir>/<train.run_name>, the outermost directory this call created for it or
    None); the name is the launcher's run id, else generated on rank 0, when empty. Every rank
    creates it (node-local under Ray Train)."""
    fixed = cfg.train.run_name or launcher_run_name(ctx.world_size)
    name = dist.broadcast_text(fixed or (new_run_name() if ctx.is_main else ""), ctx.device)
    run_dir = Path(cfg.train.output_dir).absolute() / name
    created = first_missing(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return run_dir, created


def resume_point(cfg: Config, run_dir: Path, ctx: DistContext, storage: Location | None) -> Path | None:
    """The local directory of the checkpoint to resume from (the newest intact one), or None."""
    if cfg.train.resume != "auto":
        return None
    candidates: list[Location] = []
    if ctx.is_main:
        candidates = storage_candidates(storage) if storage else shared_candidates(run_dir)
    return choose_checkpoint(candidates, run_dir, ctx.device)


def seed_everything(cfg: Config) -> None:
    import random

    import numpy as np

    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    random.seed(cfg.train.seed)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def start_tracking(cfg: Config, run_dir: Path, ctx: DistContext, resume_from: Path | None) -> tuple[Any, str]:
    """(tracker, store URI): MLflow on rank 0, continuing the previous run id; NullTracker elsewhere."""
    from hvdistill import tracking
    from hvdistill.tracking_values import default_tags

    if not (cfg.tracking.enabled and ctx.is_main):
        return tracking.NullTracker(), ""
    uri = tracking.prepare_tracking(cfg.tracking, run_dir)
    tracker = tracking.start_tracker(
        cfg.tracking,
        run_dir,
        is_main=True,
        resume_run_id=previous_run_id(run_dir, resume_from, TRACKING_FILE),
        run_name=run_dir.name,
        tags=default_tags(ctx.world_size),
    )
    record = {"run_id": tracker.run_id, "uri": uri, "experiment": cfg.tracking.experiment}
    write_atomic(run_dir / TRACKING_FILE, json.dumps(record))
    return tracker, uri


def write_run_files(
    cfg: Config, run_dir: Path, ds_config: dict[str, Any], data_hash: str, tracker: Any
) -> None:
    """config.yaml (resolved), deepspeed.json, the params and artifacts of the tracking run (rank 0)."""
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write_atomic(run_dir / "deepspeed.json", json.dumps(ds_config, indent=1))
    tracker.log_params(flatten(cfg, RUN_SECTIONS["pretrain"]))
    tracker.set_tags({"data.manifest_sha256": data_hash})
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.log_artifact(run_dir / "deepspeed.json")
    tracker.log_dict({"shards": list(cfg.data.shards), "manifest_sha256": data_hash}, "manifest_hash.json")


def schedule_length(cfg: Config, batches_per_epoch: int, gas: int) -> tuple[int, int]:
    """(micro-batches per epoch, total optimizer steps): data, train.steps_per_epoch, epochs, max_steps."""
    steps_per_epoch = cfg.train.steps_per_epoch or batches_per_epoch // gas
    if steps_per_epoch < 1 or steps_per_epoch * gas > batches_per_epoch:
        raise ConfigError(
            [
                f"train.steps_per_epoch: one epoch of this rank's data is {batches_per_epoch} micro-batches; "
                f"{max(steps_per_epoch, 1)} step(s) x {gas} accumulated micro-batches do not fit: lower "
                f"train.steps_per_epoch or raise data.epoch_samples"
            ]
        )
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps) if cfg.train.epochs else cfg.train.max_steps
    return steps_per_epoch * gas, total


def run(cfg: Config, hooks: RunHooks | None = None) -> RunResult:
    """Pretrain with `cfg` in this process (one rank); see the module docstring for the order."""
    ctx = init_distributed(cfg)
    clean = False
    try:
        result = _run(cfg, ctx, hooks or RunHooks())
        clean = True
        return result
    finally:
        shutdown_distributed(ctx, clean=clean)


def _run(cfg: Config, ctx: DistContext, hooks: RunHooks) -> RunResult:
    cfg = fit_batch_to_world(cfg, ctx.world_size)  # the global batch holds at any group size
    cfg = resolved_schedule(cfg, announce=ctx.is_main)  # the large-batch rule, logged on rank 0
    seed_everything(cfg)
    check_precision(cfg, ctx.device)
    ds_config = deepspeed_config(cfg, ctx.world_size)  # config errors before anything is written
    run_dir, created = resolve_run_dir(cfg, ctx)
    storage = Location(hooks.storage) if hooks.storage else None
    try:
        with contextlib.ExitStack() as stack:
            lock_run_dir(run_dir, ctx, stack)
            if ctx.is_main:
                print(f"hvdistill pretrain: run directory {run_dir}", flush=True)
            result = _start(cfg, ctx, hooks, run_dir, storage, ds_config)
    except BaseException:
        if created and not _has_progress(run_dir):  # nothing trained: leave no directory behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    if ctx.is_main:
        print(f"hvdistill pretrain: {result.steps} steps done; run directory {run_dir}", flush=True)
    return result


def lock_run_dir(run_dir: Path, ctx: DistContext, stack: contextlib.ExitStack) -> None:
    """Rank 0 holds the run directory's lock for the run; every rank stops if another process has it."""
    problem = ""
    if ctx.is_main:
        try:
            stack.enter_context(directory_lock(run_dir, "pretraining"))
        except OutputLocked as e:
            problem = str(e)
    problem = dist.broadcast_text(problem, ctx.device)
    if problem:
        raise OutputLocked(problem)


def _has_progress(run_dir: Path) -> bool:
    """Whether a run directory holds anything a failed start must not delete."""
    return (run_dir / METRICS_FILE).exists() or bool(ckpt.list_checkpoints(run_dir))


def _start(
    cfg: Config, ctx: DistContext, hooks: RunHooks, run_dir: Path, storage: Location | None, ds_config: dict
) -> RunResult:
    what = "the run's storage (dist.storage_path)" if storage else "the run directory (train.output_dir)"
    probe_storage(storage or Location(run_dir), what, ctx.device)
    if ctx.is_main and (fetched := fetch_missing(run_dir, storage, (TRACKING_FILE, METRICS_FILE))):
        log.info("fetched %s from the run's storage %s", ", ".join(fetched), storage)
    cfg = resolved_precision(replace(cfg, train=replace(cfg.train, run_name=run_dir.name)), ctx.device)
    resume_from = resume_point(cfg, run_dir, ctx, storage)
    tracker, uri = start_tracking(cfg, run_dir, ctx, resume_from)
    status = "FAILED"
    try:
        data_hash = manifest_hash(cfg.data)
        if ctx.is_main:
            write_run_files(cfg, run_dir, ds_config, data_hash, tracker)
            mirror_files(run_dir, storage, START_FILES)
        result = _train(cfg, ctx, hooks, run_dir, storage, resume_from, tracker, data_hash)
        result.tracking_uri = uri
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
    return result


def _restore(job: TrainJob, resume_from: Path, data_hash: str) -> None:
    """Continue `job` from the checkpoint directory `resume_from` (engine, loss, data, RNG)."""
    meta = ckpt.load_checkpoint(resume_from, job.engine, job.loss_fn)
    job.state = LoopState(meta["step"], meta["epoch"], meta["batches_done"], meta["nonfinite"])
    job.last_checkpoint = job.state.step
    job.state.batches_done = job.train_data.load_position(meta["data"])  # re-derived at another size
    if meta.get("manifest_sha256") != data_hash and job.ctx.is_main:
        log.warning("%s: the shard manifests changed since this checkpoint was written", resume_from)
    ckpt.restore_rng(resume_from, job.cfg.train.seed)
    if job.ctx.is_main:
        trim_metrics(job.run_dir / METRICS_FILE, job.state.step)
        print(f"hvdistill pretrain: resuming at step {job.state.step} from {resume_from}", flush=True)


def _checkpoint_hook(hooks: RunHooks, ctx: DistContext, run_dir: Path, storage: Location | None) -> Any:
    """The metrics file mirrored into the run's storage, then the launcher's checkpoint hook."""

    def on_checkpoint(step: int, path: Path) -> None:
        if ctx.is_main:  # first: the stored metrics are never older than the stored checkpoint
            mirror_files(run_dir, storage, (METRICS_FILE,))
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(step, path)

    return on_checkpoint


def _train(
    cfg: Config,
    ctx: DistContext,
    hooks: RunHooks,
    run_dir: Path,
    storage: Location | None,
    resume_from: Path | None,
    tracker: Any,
    data_hash: str,
) -> RunResult:
    train_data = build_stream(cfg, "train", ctx.rank, ctx.world_size)
    val_loader = None
    if has_split(cfg.data, "val"):
        val_loader = build_loader(build_stream(cfg, "val", ctx.rank, ctx.world_size), cfg, persistent=False)
    elif ctx.is_main:
        log.warning("data.shards hold no val split: val/loss/total is not computed")
    micro_per_epoch, total = schedule_length(
        cfg, train_data.batches_per_epoch(), grad_accumulation(cfg, ctx.world_size)
    )
    if resume_from is not None:  # the schedule the run began with, whatever its world size now
        total = int(ckpt.read_meta(resume_from).get("total_steps", total))
    model = build_distiller(cfg, ctx.device)
    loss_fn = build_hybrid_view_loss(cfg).to(ctx.device)
    engine = build_engine(model, cfg, ctx, total)
    torch.manual_seed(cfg.train.seed + ctx.rank)  # dropout streams differ between ranks
    tracking_run_id = dist.broadcast_text(getattr(tracker, "run_id", None) or "", ctx.device) or None
    job = TrainJob(
        cfg=cfg,
        ctx=ctx,
        engine=engine,
        loss_fn=loss_fn,
        train_data=train_data,
        train_loader=None,
        val_loader=val_loader,
        run_dir=run_dir,
        total_steps=total,
        micro_per_epoch=micro_per_epoch,
        image_dtype=resolve_image_dtype(cfg.precision, ctx.device),
        tracker=tracker,
        on_log=hooks.on_log,
        on_checkpoint=_checkpoint_hook(hooks, ctx, run_dir, storage),
        meta={
            "config": to_dict(cfg),
            "manifest_sha256": data_hash,
            "tracking_run_id": tracking_run_id,
            "total_steps": total,
        },
        staged=storage is not None,
    )
    if resume_from is not None:
        _restore(job, resume_from, data_hash)
    job.train_loader = build_loader(train_data, cfg)  # after the position is restored
    try:
        last = train(job)
    finally:
        close_loader(job.train_loader)
    backbone = export(job, tracking_run_id) if ctx.is_main else None
    if ctx.is_main:
        mirror_files(run_dir, storage, END_FILES)
    dist.barrier()
    return RunResult(run_dir, job.state.step, last, tracking_run_id, backbone)


def export(job: TrainJob, run_id: str | None) -> Path:
    """backbone.pt + backbone.json into the run directory, logged as tracking artifacts (rank 0)."""
    cfg = job.cfg
    info = {
        "model": {"lidar": asdict(cfg.model.lidar), "feature_dim": cfg.model.feature_dim},
        "geometry": {"voxel_size": cfg.geometry.voxel_size, "point_range": list(cfg.geometry.point_range)},
        "step": job.state.step,
        "tracking_run_id": run_id,
        "run_dir": str(job.run_dir),
    }
    path = ckpt.export_backbone(job.run_dir, job.engine.module, info)
    job.tracker.log_artifact(path, "backbone")
    job.tracker.log_artifact(path.with_name("backbone.json"), "backbone")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvdistill pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML diff over the default config, e.g. configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_rank else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(args.config, args.overrides, sections=RUN_SECTIONS["pretrain"])
        result = run(cfg)
    except (
        ConfigError,
        CheckpointError,
        ckpt.CheckpointMismatch,
        StorageProbeError,
        OutputLocked,
        StorageError,
    ) as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)  # a user's fix, not a bug: one line
        return 2
    if main_rank:
        print(f"hvdistill pretrain: backbone {result.backbone}")
        if result.tracking_run_id:
            from hvdistill.tracking import ui_command

            print(f"hvdistill pretrain: MLflow run {result.tracking_run_id}; to see it:")
            print(f"  {ui_command(result.tracking_uri)}")
    return 0
