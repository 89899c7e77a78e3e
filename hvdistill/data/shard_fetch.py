"""Fetching object-store shards whole into memory, bounded, with read-ahead in daemon threads.

A shard on an object store (s3://, gs://) is read the way a stream reads a tar: front to back,
once. So the reader fetches it whole, with one sequential request (hvdistill/storage.py's
`open_read`: a metadata request, then one GET of every byte), rather than one ranged request per
tar header, and indexes it from memory (shard_tar.scan_bytes). The size is untrusted: an object
larger than its manifest entry's `bytes` (or, for a bare .tar with no manifest, than
`bare_tar_limit`) is refused before a byte of it is read, as a `ShardError` the reader counts as
a bad shard.

Read-ahead (`data.read_ahead` = N): `prefetched(plan, ...)` walks a stream's planned order of
shards (deterministic: the reader draws it ahead) and keeps the next N remote shards fetching in
daemon threads while the stream reads the current one, so a stream holds at most N + 1 fetched
shards (plus those whose records still sit in its shuffle buffer). It only changes when bytes
arrive, never which records come or their order. N = 0 fetches each shard in the reading thread
when it is needed. Local shards pass through untouched (the reader scans the file as before).
Closing the generator (an abandoned iterator, the end of a worker's quota) cancels the pending
fetches: their threads finish the request in flight, drop the bytes and end; nothing outlives
that. Threads start inside the process that reads (a DataLoader worker after its fork), and
storage.py caches filesystem clients per process id.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from hvdistill.config import DataConfig
from hvdistill.data.shard_tar import ShardError
from hvdistill.storage import Location, is_uri

T = TypeVar("T")
THREAD_NAME = "hvdistill-shard-fetch"
# A writer closes a shard before a record would push it past data.shard_size_mb (a single larger
# record gets a shard of its own), so a bare .tar, whose size no manifest states, is refused past
# this many times data.shard_size_mb: room for the tar's padding and for one oversized record.
BARE_TAR_SIZE_FACTOR = 2
_MB = 1 << 20


def bare_tar_limit(cfg: DataConfig) -> int:
    """The most bytes a bare object-store .tar (no manifest entry stating its size) may hold."""
    return int(cfg.shard_size_mb * _MB * BARE_TAR_SIZE_FACTOR)


def fetch_limit(size: int, cfg: DataConfig) -> tuple[int, str]:
    """(most bytes to fetch, the fix when an object is larger) of a shard whose manifest entry
    states `size` bytes (0: not stated, a bare .tar)."""
    if size:
        return size, "larger than its manifest entry says: re-shard, or fix the manifest"
    return bare_tar_limit(cfg), f"no size in a manifest: raise data.shard_size_mb={cfg.shard_size_mb}"


def fetch_whole(uri: str, limit: int, fix: str, cancelled: Callable[[], bool] = lambda: False) -> bytes:
    """Every byte of the object at `uri` in one request, or ShardError (too large, unreadable,
    shorter than it said, `cancelled()` before the payload was asked for); `fix` ends the
    too-large message (what the user can do)."""
    try:
        with Location(uri).open_read() as f:
            size = f.seek(0, 2)  # the size the store reports; no payload read yet
            if size > limit:
                raise ShardError(f"{uri}: {size} bytes, more than the {limit} allowed ({fix})")
            if cancelled():
                raise ShardError(f"{uri}: the fetch was cancelled")
            f.seek(0)
            data = f.read(size)
    except OSError as e:  # StorageError included: missing object, unreachable store, cut connection
        raise ShardError(f"{uri}: cannot be fetched: {e}") from e
    if len(data) != size:
        raise ShardError(f"{uri}: {len(data)} of {size} bytes arrived (the object changed?)")
    return data


class Fetch:
    """One remote shard, fetched in a daemon thread (`start`) or, if never started, by `result`."""

    def __init__(self, uri: str, limit: int, fix: str):
        self.uri, self.limit, self.fix = uri, limit, fix
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._cancelled = False

    def start(self) -> Fetch:
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            data = fetch_whole(self.uri, self.limit, self.fix, lambda: self._cancelled)
            if not self._cancelled:
                self._data = data
        except Exception as e:  # handed to the reading thread by result()
            self._error = e
        finally:
            self._done.set()

    def result(self) -> bytes:
        """The shard's bytes (waits for the fetch); raises its ShardError. Hands the bytes over:
        this object keeps no reference to them."""
        if self._thread is None and not self._done.is_set():
            self._run()
        self._done.wait()
        if self._error is not None:
            raise self._error
        data, self._data = self._data, None
        if data is None:
            raise ShardError(f"{self.uri}: the fetch was cancelled")
        return data

    def cancel(self) -> None:
        """Drop the result (a running request finishes; its bytes are discarded)."""
        self._cancelled, self._data = True, None


def prefetched(
    plan: Iterable[T], target: Callable[[T], tuple[str, int, str]], ahead: int
) -> Iterator[tuple[T, Fetch | None]]:
    """(item, its Fetch or None for a local shard) for each item of `plan`, in order, with the next
    `ahead` remote items already fetching. `target(item)` = (shard path or URI, byte limit, fix)."""
    items, pending = iter(plan), deque()
    try:
        while True:
            while len(pending) <= ahead and (item := next(items, _END)) is not _END:
                uri, limit, fix = target(item)
                fetch = Fetch(uri, limit, fix) if is_uri(uri) else None
                if fetch is not None and ahead > 0:
                    fetch.start()
                pending.append((item, fetch))
            if not pending:
                return
            yield pending.popleft()
    finally:
        for _, fetch in pending:
            if fetch is not None:
                fetch.cancel()


_END = object()  # the end of a plan (items may be anything, None included)
