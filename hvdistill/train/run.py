"""`run(cfg)`: one pretraining process, alike under `hvdistill pretrain`, torchrun/deepspeed and Ray Train.

Order: process group (reused, from the launcher's environment, or a 1-rank loopback gloo group)
-> the DeepSpeed config and precision checked (a config error leaves nothing behind) -> run
directory `<train.output_dir>/<train.run_name or pretrain-<UTC time>-<6 hex>>` (rank 0 decides,
every rank gets it; printed at the start and the end) -> the resume decision (the newest
complete checkpoint in it when `train.resume=auto`; rank 0 decides) -> tracking (rank 0 a real
MLflow tracker continuing the run id in `tracking.json`, other ranks a null one) -> `config.yaml`
(resolved, with the resolved precision) and `deepspeed.json` -> data, model, loss, engine ->
restore from the checkpoint -> the loop (hvdistill/train/loop.py) -> `backbone.pt` +
`backbone.json` -> barrier, and the group destroyed only if `run` created it.

`main` is `hvdistill pretrain CONFIG [key=value ...]` (one process, or one rank under
`torchrun`/`deepspeed`); it ends by printing the MLflow run id and the `mlflow ui` command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import yaml

from hvdistill import dist
from hvdistill.config import RUN_SECTIONS, Config, ConfigError, flatten, load_config, to_dict
from hvdistill.losses.total import build_hybrid_view_loss
from hvdistill.models.distiller import build_distiller
from hvdistill.precision import resolve_image_dtype, resolved_precision
from hvdistill.train import checkpoint as ckpt
from hvdistill.train.data import build_loader, build_stream, close_loader, has_split, manifest_hash
from hvdistill.train.engine import (
    DistContext,
    build_engine,
    check_precision,
    deepspeed_config,
    grad_accumulation,
    init_distributed,
    shutdown_distributed,
)
from hvdistill.train.loop import LoopState, TrainJob, train

log = logging.getLogger(__name__)
TRACKING_FILE = "tracking.json"
_NAME_BYTES = 1024  # longest run name / run id broadcast between ranks


@dataclass
class RunHooks:
    """Launchers observe the run without the loop importing them."""

    on_log: Callable[[int, dict[str, float]], None] | None = None  # (step, metrics), every rank
    on_checkpoint: Callable[[int, Path], None] | None = None  # (step, checkpoint dir), every rank


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


def _broadcast_text(text: str, ctx: DistContext) -> str:
    """Rank 0's `text` on every rank (UTF-8 bytes in a tensor; nothing pickled)."""
    if ctx.world_size == 1:
        return text
    data = text.encode()[:_NAME_BYTES]
    buf = torch.zeros(_NAME_BYTES + 1, dtype=torch.uint8, device=ctx.device)
    buf[0] = len(data) if ctx.is_main else 0
    if ctx.is_main:
        buf[1 : 1 + len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    lengths = torch.tensor([len(data)], dtype=torch.int64, device=ctx.device)
    tdist.broadcast(lengths, src=0)
    tdist.broadcast(buf, src=0)
    return bytes(buf[1 : 1 + int(lengths)].cpu().tolist()).decode()


def resolve_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """<train.output_dir>/<train.run_name>, the name generated on rank 0 when empty; created."""
    name = _broadcast_text(cfg.train.run_name or (new_run_name() if ctx.is_main else ""), ctx)
    run_dir = Path(cfg.train.output_dir).absolute() / name
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return run_dir


def resume_point(cfg: Config, run_dir: Path, ctx: DistContext) -> Path | None:
    """The checkpoint to resume from (rank 0's view of the run directory), or None."""
    latest = ckpt.latest_checkpoint(run_dir) if cfg.train.resume == "auto" and ctx.is_main else None
    name = _broadcast_text(latest.name if latest else "", ctx)
    if not name:
        return None
    path = run_dir / ckpt.CHECKPOINTS / name
    if not (path / ckpt.META).is_file():
        raise FileNotFoundError(
            f"rank {ctx.rank} cannot see checkpoint {path} that rank 0 resumes from; every rank must see "
            f"train.output_dir (shared storage for several nodes)"
        )
    return path


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


def start_tracking(cfg: Config, run_dir: Path, ctx: DistContext) -> tuple[Any, str]:
    """(tracker, store URI): MLflow on rank 0, continuing tracking.json's run id; NullTracker elsewhere."""
    from hvdistill import tracking

    if not (cfg.tracking.enabled and ctx.is_main):
        return tracking.NullTracker(), ""
    record = run_dir / TRACKING_FILE
    previous = json.loads(record.read_text()).get("run_id") if record.is_file() else None
    uri = tracking.prepare_tracking(cfg.tracking, run_dir)
    tracker = tracking.start_tracker(
        cfg.tracking,
        run_dir,
        is_main=True,
        resume_run_id=previous,
        run_name=run_dir.name,
        tags=tracking.default_tags(ctx.world_size),
    )
    record.write_text(
        json.dumps({"run_id": tracker.run_id, "uri": uri, "experiment": cfg.tracking.experiment})
    )
    return tracker, uri


def write_run_files(
    cfg: Config, run_dir: Path, ds_config: dict[str, Any], data_hash: str, tracker: Any
) -> None:
    """config.yaml (resolved), deepspeed.json, the params and artifacts of the tracking run (rank 0)."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=1))
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
    seed_everything(cfg)
    check_precision(cfg, ctx.device)
    ds_config = deepspeed_config(cfg, ctx.world_size)  # config errors before anything is written
    run_dir = resolve_run_dir(cfg, ctx)
    if ctx.is_main:
        print(f"hvdistill pretrain: run directory {run_dir}", flush=True)
    cfg = resolved_precision(replace(cfg, train=replace(cfg.train, run_name=run_dir.name)), ctx.device)
    resume_from = resume_point(cfg, run_dir, ctx)
    tracker, uri = start_tracking(cfg, run_dir, ctx)
    status = "FAILED"
    try:
        data_hash = manifest_hash(cfg.data)
        if ctx.is_main:
            write_run_files(cfg, run_dir, ds_config, data_hash, tracker)
        result = _train(cfg, ctx, hooks, run_dir, resume_from, tracker, data_hash)
        result.tracking_uri = uri
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
    if ctx.is_main:
        print(f"hvdistill pretrain: {result.steps} steps done; run directory {run_dir}", flush=True)
    return result


def _train(
    cfg: Config,
    ctx: DistContext,
    hooks: RunHooks,
    run_dir: Path,
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
    model = build_distiller(cfg, ctx.device)
    loss_fn = build_hybrid_view_loss(cfg).to(ctx.device)
    engine = build_engine(model, cfg, ctx, total)
    torch.manual_seed(cfg.train.seed + ctx.rank)  # dropout streams differ between ranks
    state, tracking_run_id = LoopState(), _broadcast_text(getattr(tracker, "run_id", None) or "", ctx) or None
    if resume_from is not None:
        meta = ckpt.load_checkpoint(resume_from, engine, loss_fn)
        state = LoopState(meta["step"], meta["epoch"], meta["batches_done"], meta["nonfinite"])
        train_data.load_position(meta["data"])
        if meta.get("manifest_sha256") != data_hash and ctx.is_main:
            log.warning("%s: the shard manifests changed since this checkpoint was written", resume_from)
        ckpt.restore_rng(resume_from)
        if ctx.is_main:
            print(f"hvdistill pretrain: resuming at step {state.step} from {resume_from}", flush=True)
    job = TrainJob(
        cfg=cfg,
        ctx=ctx,
        engine=engine,
        loss_fn=loss_fn,
        train_data=train_data,
        train_loader=build_loader(train_data, cfg),
        val_loader=val_loader,
        run_dir=run_dir,
        total_steps=total,
        micro_per_epoch=micro_per_epoch,
        image_dtype=resolve_image_dtype(cfg.precision, ctx.device),
        tracker=tracker,
        on_log=hooks.on_log,
        on_checkpoint=hooks.on_checkpoint,
        meta={"config": to_dict(cfg), "manifest_sha256": data_hash, "tracking_run_id": tracking_run_id},
        state=state,
        last_checkpoint=state.step if resume_from is not None else -1,
    )
    try:
        last = train(job)
    finally:
        close_loader(job.train_loader)
    backbone = export(job, tracking_run_id) if ctx.is_main else None
    dist.barrier()
    return RunResult(run_dir, state.step, last, tracking_run_id, backbone)


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
    except ConfigError as exc:
        print(f"hvdistill pretrain: {exc}", file=sys.stderr)
        return 2
    if main_rank:
        print(f"hvdistill pretrain: backbone {result.backbone}")
        if result.tracking_run_id:
            from hvdistill.tracking import ui_command

            print(f"hvdistill pretrain: MLflow run {result.tracking_run_id}; to see it:")
            print(f"  {ui_command(result.tracking_uri)}")
    return 0
