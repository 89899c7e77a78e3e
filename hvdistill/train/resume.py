"""Which checkpoint a run resumes from: the newest intact one; damaged or incomplete ones are skipped, named.

Candidates, newest first: in a shared run directory its `checkpoints/step-*`; in a run's storage
(Ray Train, `dist.storage_path`) its `step-*` directories (the newest may be newer than the one
Ray registered last, when a group was killed between the upload and the registration). Rank 0
lists them and every rank gets the same list. For each in turn, every rank makes sure the files
it will read are there and intact (size and sha256 against the records in `meta.json`; from an
object store they are first downloaded into the node-local `checkpoints/.restore/`), and rank 0
checks that every file of the checkpoint is present with its recorded size. If any rank finds a
problem, all ranks move on to the previous checkpoint together and rank 0 warns, naming the
skipped one and why. When checkpoints exist but none is intact the run stops with one line
naming the newest and the way out: starting over silently would throw away what was trained.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from hvdistill import dist
from hvdistill.storage import Location
from hvdistill.train import checkpoint as ckpt

log = logging.getLogger(__name__)
RESTORE_DIR = ".restore"  # node-local copies of checkpoints read from a run's storage
META_LIMIT = 64 << 20  # bytes: meta.json holds the config and the file records, never tensors


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be resumed from; the message names the newest and the fix."""


def shared_candidates(run_dir: Path) -> list[Location]:
    """Complete checkpoints of a shared run directory, newest first."""
    return [Location(path) for _, path in reversed(ckpt.list_checkpoints(run_dir))]


def storage_candidates(storage: Location) -> list[Location]:
    """`step-*` checkpoints in a run's storage, newest first. Ray's record of the last one it
    registered may be older than the newest complete one (a group killed between the upload and the
    registration): every file of a checkpoint is checked anyway, so the newest intact one wins."""
    steps = []
    for child in storage.iterdir():
        match = ckpt.STEP_DIR.match(child.name)
        if match:
            steps.append((int(match.group(1)), child))
    return [loc for _, loc in sorted(steps, key=lambda s: s[0], reverse=True)]


def _meta(local: Path, source: Location) -> dict[str, Any]:
    if source.remote:
        (source / ckpt.META).download(local / ckpt.META)
    text = (local / ckpt.META).read_bytes()
    if len(text) > META_LIMIT:
        raise ValueError(f"{ckpt.META} is larger than {META_LIMIT} bytes")
    meta = json.loads(text)
    if not isinstance(meta, dict) or meta.get("format") != ckpt.FORMAT:
        raise ValueError(f"{ckpt.META} is not an hvdistill checkpoint's ({ckpt.FORMAT})")
    return meta


def _problem(source: Location, run_dir: Path, rank: int) -> tuple[Path, str]:
    """(local directory, "" or why this rank cannot resume from `source`)."""
    local = Path(run_dir) / ckpt.CHECKPOINTS / RESTORE_DIR / source.name if source.remote else source.local
    try:
        meta = _meta(local, source)
        records = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        for name in ckpt.needed_files(meta, rank, dist.world_size()):
            problem = ckpt.file_problem(local / name, records.get(name))
            if problem and source.remote:
                (source / name).download(local / name)  # absent or stale locally: fetch it
                problem = ckpt.file_problem(local / name, records.get(name))
            if problem:
                return local, problem
        if rank == 0:
            for name, record in records.items():
                found = (source / name).size() if (source / name).exists() else None
                if not isinstance(record, dict) or found != record.get("bytes"):
                    return local, f"{name} is missing or has the wrong size (a rank's part never arrived?)"
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        return local, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return local, ""


def choose_checkpoint(candidates: list[Location], run_dir: Path, device: Any = "cpu") -> Path | None:
    """The local directory of the newest intact candidate (every rank agrees), or None when there
    are no candidates. `candidates` matter on rank 0 only. Raises CheckpointError when none is intact."""
    names = dist.broadcast_text("\n".join(str(c) for c in candidates), device)
    listed = [Location(text) for text in names.split("\n") if text]
    rank, newest = dist.rank(), ""
    for source in listed:
        local, problem = _problem(source, run_dir, rank)
        problems = dist.all_gather_text(problem, device)
        bad = [f"rank {r}: {p}" for r, p in enumerate(problems) if p]
        if not bad:
            _clear_restores(run_dir, keep=local)
            return local
        newest = newest or f"{source} ({'; '.join(bad)})"
        if rank == 0:
            log.warning("checkpoint %s cannot be resumed from (%s); trying the previous one", source, bad[0])
    if listed:
        raise CheckpointError(
            f"no intact checkpoint to resume from; the newest is {newest}. To start this run over "
            f"set train.resume=never (its checkpoints are replaced) or give another train.run_name"
        )
    return None


def _clear_restores(run_dir: Path, keep: Path) -> None:
    """Drop node-local copies of checkpoints other than the one resumed from."""
    root = Path(run_dir) / ckpt.CHECKPOINTS / RESTORE_DIR
    for path in root.iterdir() if root.is_dir() else ():
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
