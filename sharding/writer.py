"""Deterministic WebDataset tar writing: size-bounded shards, per-attempt temporaries, sha256 on the fly.

A shard is written as `<name>.tar.<attempt>.tmp` (the attempt token is unique per task attempt,
so a retried or duplicated attempt never touches another's file) and renamed to `<name>.tar`
by `commit()` only once the whole unit is complete. Its sha256 and size are computed from the
bytes as they are written (no second read). Tar headers carry fixed owner, mode and mtime, and
members are written in sorted order, so the same samples give byte-identical shards (and the
same sha256) on every run and every attempt.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import secrets
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
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


class ShardWriter:
    """Writes records into `<prefix>-0000.tar`, `<prefix>-0001.tar`, ... of at most max_bytes.

    A shard is closed before a record would push it past `max_bytes` (a single larger record
    gets a shard of its own). Given the unit's `samples`, shards are also balanced: each holds at
    most `balanced_quota(...)` records, so a unit of 1.4 shards' worth gives two equal shards, not
    a full one and a small one. Shards stay temporaries of this attempt until `commit()` renames
    them into place and returns their infos; `abort()` deletes them.
    """

    def __init__(
        self, out_dir: Path, prefix: str, max_bytes: int, attempt: str | None = None, samples: int = 0
    ):
        self.out_dir, self.prefix, self.max_bytes = Path(out_dir), prefix, int(max_bytes)
        self.expected, self.quota = int(samples), 0  # quota set by the first record
        self.attempt = attempt or attempt_token()
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._file: HashingFile | None = None
        self._samples = 0
        self._bytes = 0

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}.tar"

    def temporary(self, name: str) -> Path:
        return self.out_dir / f"{name}.{self.attempt}{TMP_SUFFIX}"

    def _open(self) -> None:
        self._file = HashingFile(self.temporary(self._name(len(self.shards))))
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._samples, self._bytes = 0, 0

    def _finish(self) -> None:
        if self._tar is None or self._file is None:
            return
        self._tar.close()  # end-of-archive blocks and padding go through the hashing file
        self._file.close()
        info = ShardInfo(self._name(len(self.shards)), self._samples, self._file.size, self._file.hexdigest())
        self._tar, self._file = None, None
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
        """Finish the open shard; the shards are still temporaries (see commit)."""
        self._finish()
        return list(self.shards)

    def commit(self) -> list[ShardInfo]:
        """Finish, then rename every shard of this attempt to its final name."""
        self._finish()
        for shard in self.shards:
            os.replace(self.temporary(shard.name), self.out_dir / shard.name)
        return list(self.shards)

    def abort(self) -> None:
        """Close and delete this attempt's temporaries (shards already committed stay)."""
        open_index = len(self.shards)
        if self._tar is not None and self._file is not None:
            self._tar.close()
            self._file.close(sync=False)
            self._tar, self._file = None, None
        for index in range(open_index + 1):
            self.temporary(self._name(index)).unlink(missing_ok=True)
