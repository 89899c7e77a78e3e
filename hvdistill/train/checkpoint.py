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

`meta.json` also lists every file of the checkpoint with its size and sha256 (`files`, gathered
from the ranks), so a resume can tell an intact checkpoint from a truncated or damaged one
without unpickling anything (hvdistill/train/resume.py).

Two ways to write one:
- `save_checkpoint` (a shared run directory: `hvdistill pretrain`, torchrun, the DeepSpeed
  launcher): every rank writes into `checkpoints/.tmp-step-000123/`; after a barrier rank 0
  writes `meta.json` and renames the directory to `step-000123` (one rename: a checkpoint is
  complete or absent), prunes all but the newest `train.keep_checkpoints`, and a barrier
  follows. Only `step-NNNNNN` directories holding `meta.json` count; a left-over `.tmp-*` is
  ignored and cleared by the next save. Several nodes need the run directory on shared storage.
- `stage_checkpoint` (Ray Train): every rank writes its own part into a node-local staging
  directory `checkpoints/.staged-step-000123-rank-00000/` (rank 0's includes `model.pt` and
  `meta.json`)
  and the launcher persists it: Ray Train uploads every rank's directory into one checkpoint
  `step-000123` under `dist.storage_path` and registers it once all ranks have reported, so no
  disk needs to be shared.
"""

from __future__ import annotations

import hashlib
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
BACKBONE = "backbone.pt"  # the exported 3D backbone (run directory and run storage)
BACKBONE_META = "backbone.json"
TMP_PREFIX = ".tmp-"
STAGED_PREFIX = ".staged-"
STEP_DIR = re.compile(r"^step-(\d{6,})$")
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
        m = STEP_DIR.match(path.name)
        if m and path.is_dir() and (path / META).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


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


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_parts(directory: Path, engine: Engine, loss_fn: nn.Module) -> dict[str, dict[str, Any]]:
    """This rank's files of a checkpoint into `directory`: its rank file, and on rank 0 `model.pt`;
    returns {file name: {"bytes", "sha256"}} of what it wrote."""
    rank, zero = dist.rank(), engine.zero_stage
    own: dict[str, Any] = {"rng": rng_state(), "loss": _loss_state(loss_fn)}
    if zero > 0 or rank == 0:
        own["optimizer"] = engine.optimizer_state()
    written = [directory / rank_file(rank)]
    _save(own, written[0])
    if rank == 0:  # ZeRO-0/1/2 keep whole parameters on every rank
        written.append(directory / MODEL)
        _save({k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}, written[1])
    return {path.name: _file_record(path) for path in written}


def _all_files(own: dict[str, dict[str, Any]], device: torch.device) -> dict[str, dict[str, Any]]:
    """Every rank's file records merged (a collective; JSON text gathered, nothing pickled)."""
    merged: dict[str, dict[str, Any]] = {}
    for text in dist.all_gather_text(json.dumps(own), device):
        merged.update(json.loads(text))
    return dict(sorted(merged.items()))


def _meta_record(meta: dict[str, Any], step: int, engine: Engine, files: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "format": FORMAT,
        "step": step,
        "world_size": dist.world_size(),
        "zero_stage": engine.zero_stage,
        "engine": engine.counters(),
        "scheduler": engine.scheduler_state(),
        "files": files,
    }


def _write_meta(directory: Path, record: dict[str, Any]) -> None:
    with open(directory / META, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1))
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path, step: int, engine: Engine, loss_fn: nn.Module, meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint `step` atomically into the shared run directory (a collective); returns it."""
    root = Path(run_dir) / CHECKPOINTS
    tmp, final = root / f"{TMP_PREFIX}{step_name(step)}", root / step_name(step)
    rank = dist.rank()
    if rank == 0:
        for stale in root.glob(f"{TMP_PREFIX}*") if root.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    device = next(engine.module.parameters()).device
    files = _all_files(write_parts(tmp, engine, loss_fn), device)  # also the barrier before meta
    if rank == 0:
        _write_meta(tmp, _meta_record(meta, step, engine, files))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def stage_checkpoint(
    run_dir: Path, step: int, engine: Engine, loss_fn: nn.Module, meta: dict[str, Any]
) -> Path:
    """Write this rank's part of checkpoint `step` into its own node-local staging directory under
    `run_dir` for the launcher to persist (a collective: file records are gathered); returns it.

    Ranks sharing a node (and so `run_dir`) stage into separate directories, each clearing only its
    own older ones: a launcher uploading one rank's directory never sees another's files."""
    root, rank = Path(run_dir) / CHECKPOINTS, dist.rank()
    suffix = f"-{rank_file(rank).removesuffix('.pt')}"
    for stale in root.glob(f"{STAGED_PREFIX}*{suffix}") if root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # persisted already, or left by a dead attempt
    staged = root / f"{STAGED_PREFIX}{step_name(step)}{suffix}"
    staged.mkdir(parents=True)
    device = next(engine.module.parameters()).device
    files = _all_files(write_parts(staged, engine, loss_fn), device)
    if rank == 0:
        _write_meta(staged, _meta_record(meta, step, engine, files))
    return staged


# ---- reading ----
def read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((Path(path) / META).read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an hvdistill checkpoint ({FORMAT})")
    return meta


def needed_files(meta: dict[str, Any], rank: int, world: int) -> list[str]:
    """The files rank `rank` of `world` ranks reads to load a checkpoint with metadata `meta`."""
    saved = int(meta.get("world_size", 1))
    names = {MODEL, rank_file(rank % saved), rank_file(0)}  # ZeRO-0: the whole optimizer lives on rank 0
    if meta.get("zero_stage") != 0 and saved != world:
        names.update(rank_file(r) for r in range(saved))  # every rank's partition, re-partitioned
    return sorted(names)


def file_problem(path: Path, record: Any) -> str:
    """Why the checkpoint file `path` does not match its record {"bytes", "sha256"}, or ""."""
    if not path.is_file():
        return f"{path.name} is missing"
    if not isinstance(record, dict):
        return ""  # a checkpoint written before file records: existence is all that is known
    if path.stat().st_size != record.get("bytes"):
        return f"{path.name} has {path.stat().st_size} bytes, {record.get('bytes')} were written"
    if _file_record(path)["sha256"] != record.get("sha256"):
        return f"{path.name} differs from what was written (sha256)"
    return ""


class CheckpointMismatch(ValueError):
    """A checkpoint this run cannot continue from (another ZeRO family); names both and the fix."""


def load_checkpoint(path: Path, engine: Engine, loss_fn: nn.Module) -> dict[str, Any]:
    """Restore module, optimizer, scheduler, engine counters and loss state from `path`, written by
    any number of ranks; returns its metadata. RNG states are restored separately (`restore_rng`),
    right before training resumes.

    At the world size that wrote it the restore is exact. At another one: the weights, the
    optimizer state (ZeRO-0: whole on rank 0; ZeRO-1/2: every rank's partition, re-partitioned by
    DeepSpeed), the LR schedule and the step count are exact; each rank's loss state is rank
    `rank % saved ranks`'s key queue with a fresh BEV-anchor generator, and its RNG streams are
    re-seeded (`restore_rng`): the run continues, not bit for bit as it would have."""
    meta = read_meta(path)
    world, zero, rank = dist.world_size(), engine.zero_stage, dist.rank()
    saved_world, saved_zero = int(meta["world_size"]), int(meta["zero_stage"])
    if (saved_zero == 0) != (zero == 0):
        raise CheckpointMismatch(
            f"{path}: written with ZeRO-{saved_zero}, this run uses ZeRO-{zero}; a checkpoint moves between "
            f"any world sizes and between ZeRO-1 and ZeRO-2, not between ZeRO-0 and ZeRO-1/2: set "
            f"dist.zero_stage={saved_zero}, or start a new run (another train.run_name)"
        )
    device = next(engine.module.parameters()).device
    load = lambda name: torch.load(Path(path) / name, map_location=device, weights_only=True)  # noqa: E731
    engine.module.load_state_dict(load(MODEL))
    own = load(rank_file(rank % saved_world))
    if zero == 0:
        engine.load_optimizer_state([own["optimizer"] if rank == 0 else load(rank_file(0))["optimizer"]])
    else:
        if world == saved_world:  # a rank reads only its own partition (load_optimizer_state)
            states = [own["optimizer"] if r == rank else None for r in range(saved_world)]
        else:
            parts = [own if r == rank % saved_world else load(rank_file(r)) for r in range(saved_world)]
            states = [part["optimizer"] for part in parts]
        engine.load_optimizer_state(states)
    engine.load_scheduler_state(meta["scheduler"])
    counters = dict(meta["engine"])
    if world != saved_world:  # micro-steps count this rank's micro-batches: re-derived for the new split
        counters["micro_steps"] = int(counters["global_steps"]) * engine.gradient_accumulation_steps
    engine.load_counters(counters)
    buffers = {k: v.to(device) for k, v in own["loss"]["buffers"].items()}
    generator = own["loss"]["generator"] if world == saved_world else None
    _load_loss_state(loss_fn, {"buffers": buffers, "generator": generator})
    if generator is None:
        loss_fn.generator = None  # seeded again on first use, from this rank
    return meta


def restore_rng(path: Path, seed: int) -> None:
    """This rank's RNG states as they were when checkpoint `path` was written; after a change of
    world size, every rank's streams seeded afresh from (`seed`, the step, the rank)."""
    meta = read_meta(path)
    if int(meta["world_size"]) == dist.world_size():
        own = torch.load(Path(path) / rank_file(dist.rank()), map_location="cpu", weights_only=True)
        set_rng_state(own["rng"])
        return
    fresh = int(np.random.SeedSequence([seed, int(meta["step"]), dist.rank()]).generate_state(1)[0])
    torch.manual_seed(fresh)
    np.random.seed(fresh)
    random.seed(fresh)


# ---- the final export ----
def export_backbone(run_dir: Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """`<run dir>/backbone.pt` (plain {name: tensor} of the 3D student backbone, no heads) and
    `backbone.json` (`info`: model.lidar, geometry, step, run id) beside it; rank 0 only."""
    getter = getattr(model, "backbone_state_dict", None) or model.student.backbone_state_dict
    state = {k: v.detach().cpu().contiguous() for k, v in getter().items()}
    path = Path(run_dir) / BACKBONE
    tmp = path.with_suffix(".pt.tmp")
    _save(state, tmp)
    os.replace(tmp, path)
    meta = {**info, "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values()))}
    tmp_meta = path.with_name(f"{BACKBONE_META}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, path.with_name(BACKBONE_META))
    return path
