"""Deterministic WebDataset tar writing: size-bounded shards, temporary names, atomic renames.

A shard is written as `<name>.tar.tmp` and renamed to `<name>.tar` only once complete, so a
killed job never leaves a file that looks finished. Tar headers carry fixed owner, mode and
mtime, and members are written in sorted order, so the same samples give byte-identical
shards (and the same sha256) on every run.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
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


class ShardWriter:
    """Writes records into `<prefix>-0000.tar`, `<prefix>-0001.tar`, ... of at most max_bytes.

    A shard is closed before a record would push it past `max_bytes` (a single larger record
    gets a shard of its own). `close()` returns the finished shards' infos.
    """

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int):
        self.out_dir, self.prefix, self.max_bytes = Path(out_dir), prefix, int(max_bytes)
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._samples = 0
        self._bytes = 0

    def _name(self) -> str:
        return f"{self.prefix}-{len(self.shards):04d}.tar"

    def _open(self) -> None:
        tmp = self.out_dir / (self._name() + TMP_SUFFIX)
        self._tar = tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT)
        self._samples, self._bytes = 0, 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        name = self._name()
        tmp = self.out_dir / (name + TMP_SUFFIX)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.out_dir / name
        os.replace(tmp, final)
        self.shards.append(ShardInfo(name, self._samples, final.stat().st_size, file_sha256(final)))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record {"__key__": key, member: bytes} to the current shard."""
        size = record_size(record)
        if self._tar is not None and self._samples and self._bytes + size > self.max_bytes:
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
        self._finish()
        return list(self.shards)

    def abort(self) -> None:
        """Close and delete the unfinished shard (finished shards stay)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            (self.out_dir / (self._name() + TMP_SUFFIX)).unlink(missing_ok=True)
