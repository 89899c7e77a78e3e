"""Indexing a shard tar without reading its payload, and reading one record's members by offset.

The reader never hands a path to webdataset's URL opener (which runs `pipe:` names as shell
commands): it opens local files itself. `scan_shard` walks the tar headers with Python's
`tarfile` (payloads are skipped by seeking) and groups members into `RecordRef`s the way
WebDataset does (key = member name up to its first dot; a record's members are contiguous).
Nothing is decoded and no payload is read, so a reader can skip records cheaply (resume) and
shuffle light references instead of bytes. `read_record` later reads one record's members,
each bounded by the file's size.

Structural defects are reported, never raised past the reader:
- a record whose member names do not parse, repeat, are not regular files, run past the end
  of the file, or whose key already appeared in the shard carries a `problem` (the reader
  counts it as a bad sample);
- a shard that cannot be opened, has an invalid header after the first (tarfile would stop
  silently there), or ends without the end-of-archive marker (truncated) raises `ShardError`
  once the records before the defect have been yielded.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

_BLOCK = tarfile.BLOCKSIZE  # 512-byte tar blocks
_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)
# Everything tarfile raises on a damaged archive (it parses headers with struct, int(), utf-8).
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError, OverflowError)


class ShardError(RuntimeError):
    """A shard file that cannot be opened or whose tar structure is broken."""


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where one sample's members lie in a shard: enough to read it later, nothing decoded."""

    shard: str  # local path of the tar
    key: str
    index: int  # position of the record in the shard (0-based)
    members: tuple[tuple[str, int, int], ...] = ()  # (member name, data offset, size)
    problem: str = ""  # a structural defect found while indexing; non-empty = a bad record


@dataclass
class _Grouper:
    """Accumulates contiguous members of one key into a RecordRef."""

    shard: str
    seen_keys: set[str] = field(default_factory=set)
    key: str | None = None
    members: list[tuple[str, int, int]] = field(default_factory=list)
    problem: str = ""
    count: int = 0

    def add(self, key: str, member: str, offset: int, size: int, problem: str) -> RecordRef | None:
        """Add one member; returns the previous record when this member starts a new one."""
        done = self.flush() if key != self.key else None
        if self.key is None:
            self.key = key
            if key in self.seen_keys:
                self.problem = f"key {key!r} appears a second time in the shard (members split apart?)"
            self.seen_keys.add(key)
        if any(m == member for m, _, _ in self.members):
            problem = problem or f"{member}: appears twice in the record"
        self.problem = self.problem or problem
        self.members.append((member, offset, size))
        return done

    def flush(self) -> RecordRef | None:
        if self.key is None:
            return None
        ref = RecordRef(self.shard, self.key, self.count, tuple(self.members), self.problem)
        self.key, self.members, self.problem, self.count = None, [], "", self.count + 1
        return ref


def _member(info: tarfile.TarInfo, file_size: int) -> tuple[str, str, str]:
    """(key, member, problem) of one tar member."""
    key, dot, member = info.name.partition(".")
    problem = ""
    if not dot or not key or "/" in info.name:
        problem = f"{info.name!r:.80}: not a '<key>.<member>' name"
    elif info.type not in _PLAIN_FILE:
        problem = f"{member}: not a regular file (tar type {info.type!r})"
    elif info.offset_data + info.size > file_size:
        problem = f"{member}: runs past the end of the file (truncated shard)"
    return key, member, problem


def _check_end(f, offset: int, path: str) -> None:
    """tarfile stops silently at an invalid header; a sound tar ends with a zero block there."""
    f.seek(offset)
    block = f.read(_BLOCK)
    if block != bytes(_BLOCK):
        what = "is truncated" if len(block) < _BLOCK else "has an invalid tar header"
        raise ShardError(f"{path}: {what} at byte {offset}; the records after it are lost")


def scan_shard(path: str) -> Iterator[RecordRef]:
    """Records of a local tar in file order, from its headers alone (see the module doc).

    Raises ShardError for a shard that cannot be opened or whose structure breaks, after
    yielding every record before the break."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below, also when abandoned
    except OSError as e:
        raise ShardError(f"{path}: cannot open: {e}") from e
    try:
        yield from _scan(f, path)
    finally:
        f.close()


def _scan(f, path: str) -> Iterator[RecordRef]:
    file_size = os.fstat(f.fileno()).st_size
    grouper = _Grouper(path)
    broken = ""
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
        while (info := tar.next()) is not None:
            key, member, problem = _member(info, file_size)
            if (done := grouper.add(key, member, info.offset_data, info.size, problem)) is not None:
                yield done
            if problem.endswith("(truncated shard)"):
                broken = f"{path}: is truncated inside member {info.name!r}; the records after it are lost"
                break
    except _TAR_ERRORS as e:
        broken = f"{path}: unreadable tar: {type(e).__name__}: {e}"
    if (done := grouper.flush()) is not None:
        yield done
    if broken:
        raise ShardError(broken)
    _check_end(f, tar.offset, path)


def read_record(ref: RecordRef) -> dict[str, bytes | str]:
    """{"__key__": key, "__url__": shard, member: bytes} of one record (sizes were bounded by
    the file's size when it was indexed). Raises OSError if the file changed since."""
    record: dict[str, bytes | str] = {"__key__": ref.key, "__url__": ref.shard}
    with open(ref.shard, "rb") as f:
        for member, offset, size in ref.members:
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"{member}: {len(data)} of {size} bytes readable (the shard changed?)")
            record[member] = data
    return record


def count_records(path: str) -> tuple[int, str]:
    """(records indexable, problem or "") of a tar: for bare .tar paths that have no manifest."""
    count = 0
    try:
        for _ in scan_shard(path):
            count += 1
    except ShardError as e:
        return count, str(e)
    return count, ""
