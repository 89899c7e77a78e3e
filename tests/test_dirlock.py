"""hvdistill/dirlock.py: one writer per directory, on local disk (flock) and on S3 (a lease object)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from hvdistill.dirlock import OutputLocked, directory_lock, lock_location
from hvdistill.storage import Location


def _hold_local(directory: str, ready, release) -> None:
    with directory_lock(directory, "test job"):
        ready.set()
        release.wait(30)


def test_a_second_local_holder_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_local, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(OutputLocked, match=rf"another test job \(pid {holder.pid} on "):
            with directory_lock(tmp_path, "test job"):
                pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock
        holder.join()
    with directory_lock(tmp_path, "test job"):
        pass


def test_an_s3_lease_is_exclusive_expires_and_is_released(s3_bucket):
    root = Location(f"{s3_bucket}/shards")
    with directory_lock(root, "shard job", settle_s=0.05) as lease:
        note = json.loads(lease.read_text())
        assert note["expires"] > time.time() and note["pid"] > 0
        with pytest.raises(OutputLocked, match="being written by another shard job .*delete"):
            with directory_lock(root, "shard job", settle_s=0.05):
                pass
    assert not lock_location(root).exists()  # released on exit
    # a holder that died: its lease expires and the next job takes over
    lock_location(root).write_text(
        json.dumps({"owner": "dead", "pid": 1, "host": "h", "started": "t", "expires": time.time() - 1})
    )
    with directory_lock(root, "shard job", settle_s=0.05):
        pass


def test_an_s3_lease_taken_over_in_the_settle_window_is_refused(s3_bucket):
    root = Location(f"{s3_bucket}/shards")
    import threading

    def intrude() -> None:  # another job's write lands while this one settles
        time.sleep(0.2)
        lock_location(root).write_text(
            json.dumps(
                {"owner": "other", "pid": 2, "host": "h2", "started": "t", "expires": time.time() + 60}
            )
        )

    thread = threading.Thread(target=intrude)
    thread.start()
    with pytest.raises(OutputLocked, match="at the same moment"):
        with directory_lock(root, "shard job", settle_s=1.0):
            pass
    thread.join()
