"""A run's storage: the start-up probe every rank passes, and the run files mirrored into it.

Probe (`probe_storage`): before step 1, every rank writes a small file into
`<location>/.probe-<nonce>/` and reads rank 0's (rank 0 reads everyone's). A rank that cannot
write or read stops the run with one line naming the location, its node and the fix, instead
of failing at the first checkpoint hours later; every rank stops with it (the verdict is
gathered), so no rank waits in a collective. The location is the run's storage under Ray Train
(`dist.storage_path`, local or an object store), else the shared run directory.

Mirror (`mirror_files` / `fetch_missing`): under Ray Train the run directory is node-local, so
rank 0 copies the files a user or a restarted worker group needs into the run's storage:
`config.yaml`, `deepspeed.json` and `tracking.json` at the start, `metrics.jsonl` at every
checkpoint and at the end, `backbone.pt` / `backbone.json` at the end. A worker group that
restarts on a node without the run directory first fetches `tracking.json` and `metrics.jsonl`
back, so the MLflow run continues and the metrics file stays whole.

Run files (`previous_run_id`, `trim_metrics`): the MLflow run a resumed run continues, and the
metrics file cut back to the step it resumes from.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from pathlib import Path

from hvdistill import dist
from hvdistill.storage import Location, StorageError, write_atomic
from hvdistill.train import checkpoint as ckpt

log = logging.getLogger(__name__)
PROBE_PREFIX = ".probe-"  # <location>/.probe-<nonce>/rank-NNNNN, deleted after the check
_PROBE_LIMIT = 4096  # bytes of one probe file


class StorageProbeError(RuntimeError):
    """A rank cannot use the run's storage; raised on every rank at once."""


def _fix(location: Location) -> str:
    if location.remote:
        return (
            "every node needs the same endpoint and credentials for it (AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the provider's chain) and access to the bucket"
        )
    return (
        "put it on a file system every node mounts, or give an object store "
        "(dist.storage_path=s3://bucket/prefix under Ray Train)"
    )


def _write_probe(probe: Location, rank: int, nonce: str) -> str:
    """ "" or why this rank cannot write its probe."""
    mine = probe / f"rank-{rank:05d}"
    try:
        mine.write_text(json.dumps({"rank": rank, "host": socket.gethostname(), "nonce": nonce}))
    except (OSError, ValueError) as e:
        return f"cannot write {mine}: {' '.join(str(e).split())[:200]}"
    return ""


def _read_probes(probe: Location, rank: int, world: int, nonce: str) -> str:
    """ "" or why this rank cannot read the probes it must see (rank 0: all; others: rank 0's)."""
    for other in range(world) if rank == 0 else (0,):
        path = probe / f"rank-{other:05d}"
        try:
            note = json.loads(path.read_bytes(limit=_PROBE_LIMIT))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            return f"cannot read {path}, which rank {other} wrote ({' '.join(str(e).split())[:200]})"
        if not isinstance(note, dict) or note.get("nonce") != nonce or note.get("rank") != other:
            return f"{path} holds another run's probe (a different store under the same name?)"
    return ""


def probe_storage(location: Location, what: str, device: object = "cpu") -> None:
    """Every rank writes and reads a probe in `location`; StorageProbeError on every rank if one fails."""
    rank, world = dist.rank(), dist.world_size()
    nonce = dist.broadcast_text(secrets.token_hex(8) if rank == 0 else "", device)
    probe = location / f"{PROBE_PREFIX}{nonce}"
    problem = _write_probe(probe, rank, nonce)
    dist.barrier()
    problem = problem or _read_probes(probe, rank, world, nonce)
    verdicts = dist.all_gather_text(f"{socket.gethostname()}\t{problem}" if problem else "", device)
    # another rank's own failure first: rank 0 failing to read it is the same fault seen from rank 0
    failed = sorted(((r, *v.split("\t", 1)) for r, v in enumerate(verdicts) if v), key=lambda f: f[0] == 0)
    if rank == 0:
        try:
            probe.rmtree()
        except StorageError as e:
            log.warning("could not delete the storage probe %s: %s", probe, e)
    if failed:
        r, host, why = failed[0]
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise StorageProbeError(
            f"rank {r} on node {host} cannot use {what} {location}{more}: {why}; {_fix(location)}"
        )


def mirror_files(run_dir: Path, storage: Location | None, names: tuple[str, ...]) -> None:
    """Copy the run directory's files `names` (those that exist) into `storage` (rank 0's call)."""
    if storage is None:
        return
    for name in names:
        path = Path(run_dir) / name
        if path.is_file():
            (storage / name).upload(path)


def fetch_missing(run_dir: Path, storage: Location | None, names: tuple[str, ...]) -> list[str]:
    """Copy `names` from `storage` into the run directory where they are absent there; returns
    the names fetched (a worker group restarted on another node)."""
    if storage is None:
        return []
    fetched = []
    for name in names:
        if not (Path(run_dir) / name).exists() and (storage / name).is_file():
            (storage / name).download(Path(run_dir) / name)
            fetched.append(name)
    return fetched


def previous_run_id(
    run_dir: Path, resume_from: Path | None, tracking_file: str = "tracking.json"
) -> str | None:
    """The MLflow run to continue: tracking.json's, else the resumed checkpoint's; a damaged
    tracking.json is named in a warning rather than failing the resume."""
    record = run_dir / tracking_file
    if record.is_file():
        try:
            run_id = json.loads(record.read_text()).get("run_id")
            if isinstance(run_id, str) and run_id:
                return run_id
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            log.warning("%s is damaged (%s); the MLflow run id is taken from the checkpoint", record, e)
    if resume_from is not None:
        try:
            run_id = ckpt.read_meta(resume_from).get("tracking_run_id")
            return run_id if isinstance(run_id, str) and run_id else None
        except (OSError, ValueError):
            return None
    return None


def trim_metrics(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` (logged after the checkpoint a run resumes from), so
    the resumed run's lines follow without repeating a step; undecodable lines are kept."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            later = int(json.loads(line).get("step", 0)) > step
        except (ValueError, AttributeError, TypeError):
            later = False
        if not later:
            kept.append(line)
    write_atomic(path, "".join(kept))
