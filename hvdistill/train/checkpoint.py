"""Checkpoints and the backbone export of a run: atomic directories of weights-only files, the last K kept.

Layout of `<run dir>/checkpoints/step-000123/`:
- `model.pt` (rank 0): the trainable module's state dict (student, teacher head, depth lift and
  their BN statistics; the frozen teacher backbone is not part of it, see models/distiller.py);
- `rank-00000.pt` ... one per rank: this rank's RNG states (torch, CUDA, numpy, python), the loss
  module's state (key queues; the BEV-anchor generator) and its optimizer state: the whole torch
  optimizer on rank 0 only under ZeRO-0 (identical on every rank), each rank's partition under
  ZeRO-1/2;
- `meta.json` (rank 0, written last): config, step, epoch, data position, engine counters, LR
  scheduler state, manifest hash, tracking run id, world size, ZeRO stage.

Every `.pt` file is plain tensors, numbers, strings, lists and dicts: it loads with
`torch.load(path, weights_only=True)` and nothing is ever unpickled (no class is allow-listed).
DeepSpeed's own save_checkpoint/load_checkpoint are not used: they pickle objects (the loss
scaler, config objects, fragment mappings) and load with weights_only=False. Entries of an
optimizer state that are not plain (DeepSpeed's loss scaler object, ZeRO enums) are left out and
taken from the live optimizer when loading (`engine.plain_state`).

Atomicity: every rank writes into `checkpoints/.tmp-step-000123/`; after a barrier rank 0 writes
`meta.json` and renames the directory to `step-000123` (one rename: a checkpoint is complete or
absent), prunes all but the newest `train.keep_checkpoints`, and a barrier follows. Only
`step-NNNNNN` directories holding `meta.json` count; a left-over `.tmp-*` is ignored and cleared
by the next save. Several nodes need the run directory on shared storage.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hvdistill import dist
from hvdistill.train.engine import Engine

CHECKPOINTS = "checkpoints"
META = "meta.json"
MODEL = "model.pt"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
FORMAT = "hvdistill-checkpoint/1"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first: (step, directory)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and path.is_dir() and (path / META).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# ---- RNG states as tensors and lists of ints ----
def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states (weights-only serialisable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loss_state(loss_fn: nn.Module) -> dict[str, Any]:
    generator = getattr(loss_fn, "generator", None)
    return {
        "buffers": {k: v.detach().cpu() for k, v in loss_fn.state_dict().items()},
        "generator": None if generator is None else generator.get_state(),
    }


def _load_loss_state(loss_fn: nn.Module, state: dict[str, Any]) -> None:
    loss_fn.load_state_dict(state["buffers"])
    if state["generator"] is not None:
        loss_fn.generator = torch.Generator().manual_seed(0)
        loss_fn.generator.set_state(state["generator"])


# ---- writing ----
def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path, step: int, engine: Engine, loss_fn: nn.Module, meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint `step` atomically on every rank (a collective); returns its directory."""
    root = Path(run_dir) / CHECKPOINTS
    tmp, final = root / f"{TMP_PREFIX}{step_name(step)}", root / step_name(step)
    rank, zero = dist.rank(), engine.zero_stage
    if rank == 0:
        for stale in root.glob(f"{TMP_PREFIX}*") if root.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    own: dict[str, Any] = {"rng": rng_state(), "loss": _loss_state(loss_fn)}
    if zero > 0 or rank == 0:
        own["optimizer"] = engine.optimizer_state()
    _save(own, tmp / rank_file(rank))
    if rank == 0:  # ZeRO-0/1/2 keep whole parameters on every rank
        _save({k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}, tmp / MODEL)
    dist.barrier()
    if rank == 0:
        full = {
            **meta,
            "format": FORMAT,
            "step": step,
            "world_size": dist.world_size(),
            "zero_stage": zero,
            "engine": engine.counters(),
            "scheduler": engine.scheduler_state(),
        }
        (tmp / META).write_text(json.dumps(full, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


# ---- reading ----
def read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((Path(path) / META).read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an hvdistill checkpoint ({FORMAT})")
    return meta


def load_checkpoint(path: Path, engine: Engine, loss_fn: nn.Module) -> dict[str, Any]:
    """Restore module, optimizer, scheduler, engine counters and loss state from `path`; returns its
    metadata. RNG states are restored separately (`restore_rng`), right before training resumes."""
    meta = read_meta(path)
    world, zero = dist.world_size(), engine.zero_stage
    if meta["world_size"] != world or meta["zero_stage"] != zero:
        raise ValueError(
            f"{path}: written by {meta['world_size']} ranks with ZeRO-{meta['zero_stage']}; this run has "
            f"{world} ranks with ZeRO-{zero}. Resume with the same dist.num_workers / dist.zero_stage, or "
            f"start a new run (train.resume=never or another train.run_name)"
        )
    device = next(engine.module.parameters()).device
    load = lambda name: torch.load(Path(path) / name, map_location=device, weights_only=True)  # noqa: E731
    engine.module.load_state_dict(load(MODEL))
    own = load(rank_file(dist.rank()))
    optimizer = own["optimizer"] if zero > 0 else load(rank_file(0))["optimizer"]
    engine.load_optimizer_state(optimizer)
    engine.load_scheduler_state(meta["scheduler"])
    engine.load_counters(meta["engine"])
    buffers = {k: v.to(device) for k, v in own["loss"]["buffers"].items()}
    _load_loss_state(loss_fn, {**own["loss"], "buffers": buffers})
    return meta


def restore_rng(path: Path) -> None:
    """This rank's RNG states as they were when checkpoint `path` was written."""
    own = torch.load(Path(path) / rank_file(dist.rank()), map_location="cpu", weights_only=True)
    set_rng_state(own["rng"])


# ---- the final export ----
def export_backbone(run_dir: Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """`<run dir>/backbone.pt` (plain {name: tensor} of the 3D student backbone, no heads) and
    `backbone.json` (`info`: model.lidar, geometry, step, run id) beside it; rank 0 only."""
    getter = getattr(model, "backbone_state_dict", None) or model.student.backbone_state_dict
    state = {k: v.detach().cpu().contiguous() for k, v in getter().items()}
    path = Path(run_dir) / "backbone.pt"
    tmp = path.with_suffix(".pt.tmp")
    _save(state, tmp)
    os.replace(tmp, path)
    meta = {**info, "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values()))}
    tmp_meta = path.with_name("backbone.json.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, path.with_name("backbone.json"))
    return path
