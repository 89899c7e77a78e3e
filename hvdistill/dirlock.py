"""One writer per output directory: a kernel lock on local disks, a lease object on object stores.

`directory_lock(location, what)` holds `<location>/_state/job.lock` for the duration of a block;
a second job on the same directory fails at once with `OutputLocked`, naming the holder (pid,
host, start time) and the way out. Sharding, pretraining, fine-tuning and sweep directories all
take it.

Local directories (and NFS): the kernel's `flock` on the lock file, taken without waiting. The
kernel drops it when the holder exits or is killed (SIGKILL included), so a crashed job never
leaves a stale lock; on NFS, Linux maps `flock` to byte-range locks the server releases when a
dead client's lease expires (about 90 s for NFSv4). A file system without lock support is refused
rather than written unprotected.

Object stores have no lock and, through pyarrow.fs, no conditional write, so the lock is a lease:
a small JSON object naming its holder and an expiry time, renewed by a background thread every
`lease_s / 3` seconds. A job refuses a lease that is held and unexpired; otherwise it writes its
own, waits `settle_s` and reads it back, so of two jobs starting within the same moment the one
whose write landed second keeps the lease and the other stops. A job killed without releasing
leaves a lease that expires after `lease_s`; the message says when, and that deleting the
object is safe once that job is known to be dead. Clocks of the hosts are assumed to agree to
well within `lease_s`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hvdistill.storage import Location, StorageError

log = logging.getLogger(__name__)
STATE_DIR = "_state"
LOCK_NAME = "job.lock"
LEASE_S = 120.0  # how long an unrenewed object-store lease stays valid
SETTLE_S = 1.0  # wait between writing a lease and reading it back
_NOTE_BYTES = 4096  # the holder's note is a short JSON line


class OutputLocked(ValueError):
    """Another job holds the output directory (or it cannot be locked at all)."""


def lock_location(directory: str | Path | Location) -> Location:
    return Location(directory) / STATE_DIR / LOCK_NAME


def _note(**extra: Any) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def _describe(note: Any) -> str:
    try:
        return f"pid {note['pid']} on {note['host']}, started {note['started']}"
    except (KeyError, TypeError):
        return "holder not yet recorded"


@contextmanager
def directory_lock(
    directory: str | Path | Location,
    what: str = "job",
    *,
    lease_s: float = LEASE_S,
    settle_s: float = SETTLE_S,
) -> Iterator[Location]:
    """Hold `directory`'s lock during the block; raises OutputLocked if another `what` holds it."""
    location = Location(directory)
    if location.remote:
        with _lease(location, what, lease_s, settle_s) as held:
            yield held
    else:
        with _flock(location.local, what) as held:
            yield Location(held)


@contextmanager
def _flock(directory: Path, what: str) -> Iterator[Path]:
    path = Path(directory) / STATE_DIR / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _describe(json.loads(os.pread(fd, _NOTE_BYTES, 0) or b"{}"))
            except (OSError, ValueError):
                holder = "holder not yet recorded"
            raise OutputLocked(
                f"{directory} is being written by another {what} ({holder}); wait for it to finish or "
                f"use another directory (the lock on {path} is released when that process exits)"
            ) from None
        except OSError as exc:
            raise OutputLocked(f"cannot lock {path} ({exc}); use a file system with locks") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_note()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _read_lease(path: Location) -> dict[str, Any] | None:
    try:
        note = json.loads(path.read_bytes(limit=_NOTE_BYTES))
    except (StorageError, ValueError, UnicodeDecodeError):
        return None  # absent, unreadable or damaged: not a valid lease
    return note if isinstance(note, dict) else None


class _Renewer(threading.Thread):
    """Rewrites the lease with a later expiry until stopped; notes when another job took it over."""

    def __init__(self, path: Location, note: dict[str, Any], lease_s: float):
        super().__init__(daemon=True, name="hvdistill-lease")
        self.path, self.note, self.lease_s = path, note, lease_s
        self.halt, self.lost = threading.Event(), False

    def run(self) -> None:
        while not self.halt.wait(self.lease_s / 3):
            current = _read_lease(self.path)
            if current is not None and current.get("owner") != self.note["owner"]:
                self.lost = True
                log.error(
                    "%s: the lease was taken over by %s; this job's writes are no longer exclusive",
                    self.path,
                    _describe(current),
                )
                return
            try:
                self.path.write_text(json.dumps({**self.note, "expires": time.time() + self.lease_s}))
            except StorageError as e:
                log.warning("%s: cannot renew the lease (%s); retrying", self.path, e)


@contextmanager
def _lease(directory: Location, what: str, lease_s: float, settle_s: float) -> Iterator[Location]:
    path = directory / STATE_DIR / LOCK_NAME
    held = _read_lease(path)
    if held is not None and float(held.get("expires", 0) or 0) > time.time():
        until = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(held["expires"])))
        raise OutputLocked(
            f"{directory} is being written by another {what} ({_describe(held)}); its lease on {path} "
            f"runs until {until} unless renewed: wait for that job, use another location, or delete "
            f"{path} if that job is known to be dead"
        )
    note = _note(owner=secrets.token_hex(8))
    path.write_text(json.dumps({**note, "expires": time.time() + lease_s}))
    time.sleep(settle_s)
    current = _read_lease(path)
    if current is None or current.get("owner") != note["owner"]:
        raise OutputLocked(
            f"{directory}: another {what} ({_describe(current)}) took the lease on {path} at the same "
            f"moment; only one may write there"
        )
    renewer = _Renewer(path, note, lease_s)
    renewer.start()
    try:
        yield path
    finally:
        renewer.halt.set()
        renewer.join()
        if not renewer.lost and (_read_lease(path) or {}).get("owner") == note["owner"]:
            path.unlink()
