"""One sharding job per output directory: an exclusive lock on `_state/job.lock`.

`job_lock(out_dir)` is hvdistill/dirlock.py's `directory_lock(out_dir, "shard job")`: on a
local directory (or NFS) the kernel's `flock` on the file, which the kernel drops when the
holder exits or is killed; on an object store a lease object that the job renews while it runs
and that expires `dirlock.LEASE_S` seconds after a job died without releasing it. Either way a
second job on the same directory fails at once with `OutputLocked` (a ValueError), naming the
holder (pid, host, start time) and the way out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hvdistill.dirlock import OutputLocked, directory_lock
from hvdistill.storage import Location

__all__ = ["OutputLocked", "job_lock"]
WHAT = "shard job"  # how the holder is named in the refusal


@contextmanager
def job_lock(out_dir: str | Path | Location) -> Iterator[Location]:
    """Hold the directory's lock for the duration of the block; raises OutputLocked if taken."""
    with directory_lock(out_dir, WHAT) as held:
        yield held
