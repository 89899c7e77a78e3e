"""Deterministic WebDataset tar writing: size-bounded shards, per-attempt temporaries, sha256 on the fly.

A shard is written as `<name>.tar.<attempt>.tmp` (the attempt token is unique per task attempt,
so a retried or duplicated attempt never touches another's file). Its sha256 and size are
computed from the bytes as they are written (no second read). Tar headers carry fixed owner,
mode and mtime, and members are written in sorted order, so the same samples give
byte-identical shards (and the same sha256) on every run and every attempt.

Where a shard goes once written depends on the output (a `Location`):
- a local directory: the temporary lies beside its final name and `commit()` renames it to
  `<name>.tar` only once the whole unit is complete;
- an object store: the temporary is written in a local scratch directory (under the system
  temporary directory, `TMPDIR`) and uploaded to its final name as soon as the shard is
  finished (`Location.upload`: a temporary object, then a move), then deleted, so a worker's
  disk holds one shard at a time. Either way the unit is done only once its done-record exists
  (sharding/manifest.py); an uploaded shard of an unfinished unit is redone by the next run.
  A scratch directory left by a killed worker is removed by the next writer on that host.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import secrets
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hvdistill.storage import Location

TMP_SUFFIX = ".tmp"
SCRATCH_PREFIX = "hvdistill-shard-"  # local scratch of a writer to an object store: <prefix><pid>-<token>
_TOKEN_BYTES = 6  # attempt tokens: 12 hex digits
# Sample sizes vary within a unit (points, JPEG entropy); the shard count estimated from the
# first record is taken with this much headroom so the byte bound rarely has to cut a shard early.
ESTIMATE_MARGIN = 1.15
_READ_BLOCK = 1 << 20


@dataclass
class ShardInfo:
    name: str  # file name inside the output directory
    samples: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def record_size(record: dict[str, Any]) -> int:
    """Bytes a record adds to a tar (payloads plus one 512-byte header and padding each)."""
    size = 0
    for name, value in record.items():
        if not name.startswith("__"):
            size += 512 + -(-len(value) // 512) * 512
    return size


def balanced_quota(first_record_bytes: int, samples: int, max_bytes: int) -> int:
    """Samples per shard that split `samples` records evenly over the shards they need.

    The shard count is estimated from the first record's size (with ESTIMATE_MARGIN); equal
    shards keep every sample equally likely when a reader draws shards uniformly."""
    if samples <= 0:
        return 1 << 62  # unknown unit size: the byte bound alone decides
    shards = max(1, math.ceil(first_record_bytes * samples * ESTIMATE_MARGIN / max(max_bytes, 1)))
    return math.ceil(samples / shards)


def attempt_token() -> str:
    """A fresh token naming one attempt's temporary files."""
    return secrets.token_hex(_TOKEN_BYTES)


class HashingFile:
    """A write-only file that hashes and counts every byte written to it (tarfile's fileobj)."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self, sync: bool = True) -> None:
        if sync:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clear_dead_scratch(root: Path | None = None) -> list[Path]:
    """Remove scratch directories of writers whose process is gone (a killed worker's shard)."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX).partition("-")[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class ShardWriter:
    """Writes records into `<prefix>-0000.tar`, `<prefix>-0001.tar`, ... of at most max_bytes.

    A shard is closed before a record would push it past `max_bytes` (a single larger record
    gets a shard of its own). Given the unit's `samples`, shards are also balanced: each holds at
    most `balanced_quota(...)` records, so a unit of 1.4 shards' worth gives two equal shards, not
    a full one and a small one. `out_dir` is a local directory or an object-store location (see
    the module docstring): local shards stay temporaries of this attempt until `commit()` renames
    them into place, remote ones are uploaded as each is finished; `commit()` returns their infos
    and `abort()` deletes this attempt's temporaries.
    """

    def __init__(
        self,
        out_dir: str | Path | Location,
        prefix: str,
        max_bytes: int,
        attempt: str | None = None,
        samples: int = 0,
    ):
        self.out, self.prefix, self.max_bytes = Location(out_dir), prefix, int(max_bytes)
        self.expected, self.quota = int(samples), 0  # quota set by the first record
        self.attempt = attempt or attempt_token()
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._file: HashingFile | None = None
        self._samples = 0
        self._bytes = 0
        if self.out.remote:
            clear_dead_scratch()
            self.work_dir = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        else:
            self.work_dir = self.out.local  # where this attempt's temporaries are written

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}.tar"

    def temporary(self, name: str) -> Path:
        return self.work_dir / f"{name}.{self.attempt}{TMP_SUFFIX}"

    def _open(self) -> None:
        self._file = HashingFile(self.temporary(self._name(len(self.shards))))
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._samples, self._bytes = 0, 0

    def _finish(self) -> None:
        if self._tar is None or self._file is None:
            return
        self._tar.close()  # end-of-archive blocks and padding go through the hashing file
        self._file.close(sync=not self.out.remote)  # a local shard is renamed: make it durable first
        info = ShardInfo(self._name(len(self.shards)), self._samples, self._file.size, self._file.hexdigest())
        self._tar, self._file = None, None
        if self.out.remote:
            tmp = self.temporary(info.name)
            (self.out / info.name).upload(tmp)  # atomic: readers see the whole shard or none
            tmp.unlink()
        self.shards.append(info)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record {"__key__": key, member: bytes} to the current shard."""
        size = record_size(record)
        if not self.quota:
            self.quota = balanced_quota(size, self.expected, self.max_bytes)
        full = self._samples >= self.quota or self._bytes + size > self.max_bytes
        if self._tar is not None and self._samples and full:
            self._finish()
        if self._tar is None:
            self._open()
        key = record["__key__"]
        for member in sorted(m for m in record if not m.startswith("__")):
            data = record[member]
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._samples += 1
        self._bytes += size

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; local shards are still temporaries (see commit)."""
        self._finish()
        return list(self.shards)

    def commit(self) -> list[ShardInfo]:
        """Finish, then put every shard of this attempt under its final name (local: a rename;
        remote: they were uploaded as they were finished, and the scratch directory goes)."""
        self._finish()
        if self.out.remote:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return list(self.shards)
        for shard in self.shards:
            os.replace(self.temporary(shard.name), self.work_dir / shard.name)
        return list(self.shards)

    def abort(self) -> None:
        """Close and delete this attempt's temporaries (shards already committed or uploaded stay)."""
        open_index = len(self.shards)
        if self._tar is not None and self._file is not None:
            self._tar.close()
            self._file.close(sync=False)
            self._tar, self._file = None, None
        for index in range(open_index + 1):
            self.temporary(self._name(index)).unlink(missing_ok=True)
        if self.out.remote:
            shutil.rmtree(self.work_dir, ignore_errors=True)
