"""Indexing a shard tar without reading its payload, and reading one record's members by offset.

The reader never hands a path to webdataset's URL opener (which runs `pipe:` names as shell
commands): it opens files itself. `scan_shard` walks the tar headers of a local file with
Python's `tarfile` (payloads are skipped by seeking) and groups members into `RecordRef`s the
way WebDataset does (key = member name up to its first dot; a record's members are
contiguous). Nothing is decoded and no payload is read, so a reader can skip records cheaply
(resume) and shuffle light references instead of bytes. `read_record` / `read_members` later
read one record's members, each bounded by the file's size.

A shard fetched whole from an object store (hvdistill/data/shard_fetch.py) is indexed the same
way from memory by `scan_bytes`: its references share the fetched bytes (`RecordRef.data`, left
out of equality and repr), so the bytes live exactly as long as one of its records waits in a
shuffle buffer, and reading a record slices memory. A reference to an object-store shard without
bytes (fine-tuning keeps only references) reads its members with ranged requests through
hvdistill/storage.py, neighbouring members in one request.

Structural defects are reported, never raised past the reader:
- a record whose member names do not parse, repeat, are not regular files, run past the end
  of the file, or whose key already appeared in the shard carries a `problem` (the reader
  counts it as a bad sample);
- a shard that cannot be opened, has an invalid header after the first (tarfile would stop
  silently there), or ends without the end-of-archive marker (truncated) raises `ShardError`
  once the records before the defect have been yielded.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from hvdistill.storage import Location, is_uri

_BLOCK = tarfile.BLOCKSIZE  # 512-byte tar blocks
_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)
# Everything tarfile raises on a damaged archive (it parses headers with struct, int(), utf-8).
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError, OverflowError)
# Ranged reads of an object-store record: members closer than this are read in one request
# (a record's points, labels, meta and pairs lie side by side: the writer sorts member names).
_MAX_GAP = 256 << 10  # bytes


class ShardError(RuntimeError):
    """A shard file that cannot be opened or whose tar structure is broken."""


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where one sample's members lie in a shard: enough to read it later, nothing decoded."""

    shard: str  # local path or object-store URI of the tar
    key: str
    index: int  # position of the record in the shard (0-based)
    members: tuple[tuple[str, int, int], ...] = ()  # (member name, data offset, size)
    problem: str = ""  # a structural defect found while indexing; non-empty = a bad record
    # the whole shard, fetched into memory and shared by its references (None: read the file)
    data: bytes | None = field(default=None, compare=False, hash=False, repr=False)


@dataclass
class _Grouper:
    """Accumulates contiguous members of one key into a RecordRef."""

    shard: str
    data: bytes | None = None  # the shard's bytes when it was fetched into memory
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
        ref = RecordRef(self.shard, self.key, self.count, tuple(self.members), self.problem, self.data)
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
        yield from _scan(f, path, os.fstat(f.fileno()).st_size)
    finally:
        f.close()


def scan_bytes(name: str, data: bytes) -> Iterator[RecordRef]:
    """Records of a shard held in memory (`name`: its URI), as `scan_shard`; the references share
    `data`. Raises ShardError like `scan_shard`."""
    yield from _scan(io.BytesIO(data), name, len(data), data)


def _scan(f, path: str, file_size: int, data: bytes | None = None) -> Iterator[RecordRef]:
    grouper = _Grouper(path, data)
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
    record.update(read_members(ref))
    return record


def read_members(ref: RecordRef, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """{member: bytes} of the record's members named in `names` (all when None): sliced from the
    fetched bytes, read by offset from a local file, or by ranged requests from an object store.
    Raises OSError if the file changed since it was indexed."""
    wanted = [m for m in ref.members if names is None or m[0] in names]
    if ref.data is not None:  # offsets and sizes were bounded by len(data) when indexed
        return {member: ref.data[offset : offset + size] for member, offset, size in wanted}
    if is_uri(ref.shard):
        return _read_ranges(ref.shard, wanted)
    out: dict[str, bytes] = {}
    with open(ref.shard, "rb") as f:
        for member, offset, size in wanted:
            f.seek(offset)
            out[member] = _exact(f.read(size), size, member)
    return out


def _exact(data: bytes, size: int, member: str) -> bytes:
    if len(data) != size:
        raise OSError(f"{member}: {len(data)} of {size} bytes readable (the shard changed?)")
    return data


def _read_ranges(uri: str, wanted: list[tuple[str, int, int]]) -> dict[str, bytes]:
    """Members of an object-store shard: one ranged request per run of members closer than _MAX_GAP."""
    spans: list[list[tuple[str, int, int]]] = []
    for member in sorted(wanted, key=lambda m: m[1]):
        if spans and member[1] - max(o + s for _, o, s in spans[-1]) <= _MAX_GAP:
            spans[-1].append(member)
        else:
            spans.append([member])
    out: dict[str, bytes] = {}
    with Location(uri).open_read() as f:
        for span in spans:
            start = span[0][1]
            stop = max(o + s for _, o, s in span)
            f.seek(start)
            block = _exact(f.read(stop - start), stop - start, span[-1][0])
            for member, offset, size in span:
                out[member] = block[offset - start : offset - start + size]
    return {member: out[member] for member, _, _ in wanted}


def count_records(path: str, data: bytes | None = None) -> tuple[int, str]:
    """(records indexable, problem or "") of a tar (a local file, or `data` fetched from `path`):
    for bare .tar paths that have no manifest."""
    count = 0
    try:
        for _ in scan_shard(path) if data is None else scan_bytes(path, data):
            count += 1
    except ShardError as e:
        return count, str(e)
    return count, ""
