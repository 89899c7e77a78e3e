"""`hvdistill shard verify DIR [--deep]`: check every shard of a manifest, in parallel on Ray.

DIR is a local directory or an object-store prefix (`s3://bucket/prefix`, hvdistill/storage.py;
credentials from the environment of the driver and of every Ray worker). Every manifest entry is
first resolved to a location inside DIR by `resolve_shard_location`
(hvdistill/data/shard_names.py; a manifest is input: a name that is not a plain shard file name,
such as `pipe:...`, an absolute path, `../x.tar` or `s3://other/x.tar`, or a local symlink
leading out of DIR, is reported and never opened). Then one Ray task per shard streams it once,
in large sequential blocks (one ranged request each on an object store, nothing written to
disk), through sha256 and the tar parser together, and checks its size and checksum against the
manifest, its sample count, and that every member belongs to a sample key; with `--deep` it
also decodes every sample with the schema (JPEG, PNG, npy, JSON). The driver checks that no key
appears twice in DIR, that no temporary is left over (one listing) and that every source is
complete. Exit status 1 on any problem, 2 for a DIR the storage layer refuses. Without
--ray-address a local Ray is started with --workers CPUs (default: all cores) and shut down at
the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hvdistill.data.schema import SchemaError, decode_sample
from hvdistill.data.shard_names import UnsafeShardName, resolve_shard_location
from hvdistill.storage import Location, StorageError
from sharding.manifest import MANIFEST, read_json
from sharding.writer import TMP_SUFFIX

_READ_BLOCK = 8 << 20  # bytes per read of a shard: one ranged request each on an object store
_ENTRY_FIELDS = ("name", "bytes", "samples", "sha256")


class HashingReader:
    """A read-only stream over `file` that hashes and counts every byte of it, reading the file in
    blocks of `block` bytes whatever size the caller (the tar parser) asks for."""

    def __init__(self, file: BinaryIO, block: int = _READ_BLOCK):
        self._file, self._block = file, block
        self.digest, self.size = hashlib.sha256(), 0
        self._buffer, self._pos = b"", 0

    def _fill(self) -> bool:
        """Replace the (consumed) buffer with the next block; False at the end of the file."""
        data = self._file.read(self._block)
        self.digest.update(data)
        self.size += len(data)
        self._buffer, self._pos = data, 0
        return bool(data)

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if self._pos >= len(self._buffer) and not self._fill():
                break
            available = len(self._buffer) - self._pos
            take = available if n < 0 else min(n, available)
            parts.append(self._buffer[self._pos : self._pos + take])
            self._pos += take
            n = n - take if n > 0 else n
        return b"".join(parts)

    def drain(self) -> None:
        """Read (and hash) whatever the tar parser left, e.g. the end-of-archive padding."""
        self._pos = len(self._buffer)
        while self._fill():
            pass


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records {"__key__": key, member: bytes} of a tar file, grouped by key in file order."""
    with tarfile.open(path, mode="r|") as tar:
        yield from stream_records(tar, load=True)


def stream_records(tar: tarfile.TarFile, load: bool) -> Iterator[dict[str, Any]]:
    """Records {"__key__": key, member: bytes} of a tar opened in stream mode, grouped by key;
    without `load` the member bytes are skipped (b"") rather than read into memory."""
    record: dict[str, Any] = {}
    for info in tar:
        if not info.isfile():
            continue
        key, _, member = info.name.partition(".")
        if record and record["__key__"] != key:
            yield record
            record = {}
        record["__key__"] = key
        record[member] = tar.extractfile(info).read() if load else b""
    if record:
        yield record


def _read_shard(location: Location, name: str, deep: bool) -> tuple[list[str], list[str], HashingReader]:
    """Stream one shard once: (problems found in its members, its sample keys, the reader)."""
    problems, keys = [], []
    with location.open_read() as f:
        reader = HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for record in stream_records(tar, load=deep):
                    keys.append(record["__key__"])
                    if not record["__key__"] or "" in record:
                        problems.append(f"{name}: member without a '<key>.<member>' name")
                    if deep:
                        try:
                            decode_sample(record)
                        except SchemaError as e:
                            problems.append(f"{name}: sample {record['__key__']}: {e}")
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(f"{name}: unreadable tar: {e}")
        reader.drain()
    return problems, keys, reader


def check_shard(path: str, entry: dict[str, Any], deep: bool) -> tuple[list[str], list[str]]:
    """(problems, sample keys) of one shard at `path` (a local path or an object URI); reads it
    exactly once, as a stream."""
    name = entry["name"]
    location = Location(path)
    try:
        if not location.is_file():
            return [f"{name}: missing"], []
        problems, keys, reader = _read_shard(location, name, deep)
    except StorageError as e:
        return [f"{name}: cannot be read ({e})"], []
    if reader.size != entry["bytes"]:
        problems.append(f"{name}: {reader.size} bytes, manifest says {entry['bytes']}")
    if reader.digest.hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest")
    if len(keys) != entry["samples"]:
        problems.append(f"{name}: {len(keys)} samples, manifest says {entry['samples']}")
    return problems, keys


def _entries(out: Location, manifest: dict[str, Any]) -> tuple[list[tuple[Location, dict]], list[str]]:
    """(location, entry) of every manifest entry that names a shard inside `out`; problems of the rest."""
    where = out / MANIFEST
    found, problems = [], []
    for entry in manifest.get("shards", []):
        if not isinstance(entry, dict) or any(f not in entry for f in _ENTRY_FIELDS):
            problems.append(f"{where}: malformed shard entry {str(entry)[:200]!r}")
            continue
        try:
            found.append((resolve_shard_location(out, entry["name"], where), entry))
        except UnsafeShardName as e:
            problems.append(str(e))
    return found, problems


def _load_manifest(out: Location) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) or (None, the problem)."""
    where = out / MANIFEST
    try:
        if not where.is_file():
            return None, f"{where}: missing (the sharding job did not finish)"
        manifest = read_json(where)
    except (OSError, ValueError) as e:
        return None, f"{where}: unreadable ({e})"
    if not isinstance(manifest, dict):
        return None, f"{where}: not a manifest (a JSON object is expected)"
    return manifest, None


def _check_shards(entries: list[tuple[Location, dict]], deep: bool) -> tuple[list[str], Counter]:
    """Problems and sample-key counts of every shard, one Ray task each."""
    import ray

    task = ray.remote(num_cpus=1)(check_shard)
    refs = {task.remote(str(location), entry, deep): entry["name"] for location, entry in entries}
    problems, keys = [], Counter()
    for ref, name in refs.items():
        try:
            shard_problems, shard_keys = ray.get(ref)
        except ray.exceptions.RayError as e:
            shard_problems, shard_keys = [f"{name}: check crashed: {str(e).strip().splitlines()[-1]}"], []
        problems += shard_problems
        keys.update(shard_keys)
    return problems, keys


def verify_directory(out_dir: str | Path | Location, deep: bool = False) -> list[str]:
    """Every problem found in a shard directory or prefix (shards checked by Ray tasks in parallel)."""
    out = Location(out_dir)
    manifest, problem = _load_manifest(out)
    if manifest is None:
        return [problem]
    entries, problems = _entries(out, manifest)
    shard_problems, keys = _check_shards(entries, deep)
    problems += shard_problems
    problems += [f"key {k} appears {n} times" for k, n in sorted(keys.items()) if n > 1]
    leftovers = [n for n in out.file_sizes() if n.endswith(TMP_SUFFIX)]
    problems += [f"{n}: leftover temporary file" for n in leftovers]
    incomplete = [
        f"{s.get('dataset')} {s.get('split')}" for s in manifest.get("sources", []) if not s.get("complete")
    ]
    problems += [f"{s}: not every unit finished; re-run its shard command" for s in incomplete]
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill shard verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="shard directory or s3://bucket/prefix holding manifest.json")
    p.add_argument("--deep", action="store_true", help="also decode every sample (images included)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster; default: local")
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers <= 0:
        print("hvdistill shard verify: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        out = Location(args.dir)
    except StorageError as e:
        print(f"hvdistill shard verify: {e}", file=sys.stderr)
        return 2
    import ray

    from sharding.job import init_ray

    started = init_ray(args.ray_address, args.workers or os.cpu_count() or 1)
    try:
        problems = verify_directory(out, deep=args.deep)
    finally:
        if started:
            ray.shutdown()
    if problems:
        print(f"hvdistill shard verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    manifest = read_json(out / MANIFEST)
    depth = "decoded" if args.deep else "checksummed (add --deep to decode)"
    counts = f"{manifest['samples']} samples in {len(manifest['shards'])} shards"
    print(f"hvdistill shard verify: OK, {counts}, {depth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
