"""One sharding job per output directory: an exclusive lock on `_state/job.lock`.

The lock is the kernel's `flock` on that file, taken without waiting: a second job on the same
directory fails at once with `OutputLocked`, naming the holder (pid, host, start time, which the
holder writes into the file). The kernel drops the lock when the holding process exits or is
killed (SIGKILL included), so a crashed job never leaves a stale lock behind; the file itself
stays and is simply taken over by the next job. On NFS, Linux maps `flock` to NFS byte-range
locks, which the server releases when the dead client's lease expires (about 90 s for NFSv4).
A file system without lock support is refused rather than written unprotected.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sharding.manifest import STATE_DIR

LOCK_NAME = "job.lock"
_HOLDER_BYTES = 4096  # the holder's note is a short JSON line


class OutputLocked(ValueError):
    """Another sharding job holds the output directory (or it cannot be locked at all)."""


def lock_path(out_dir: Path) -> Path:
    return Path(out_dir) / STATE_DIR / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        note = json.loads(os.pread(fd, _HOLDER_BYTES, 0) or b"{}")
        return f"pid {note['pid']} on {note['host']}, started {note['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not yet recorded"


@contextmanager
def job_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the directory's lock for the duration of the block; raises OutputLocked if taken."""
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLocked(
                f"{out_dir} is being written by another shard job ({_holder(fd)}); wait for it to "
                f"finish or use another --out (the lock on {path} is released when that job exits)"
            ) from None
        except OSError as exc:
            raise OutputLocked(f"cannot lock {path} ({exc}); shard to a file system with locks") from None
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
