"""`hvdistill shard verify DIR [--deep]`: check every shard of a manifest, in parallel on Ray.

Every manifest entry is first resolved with `resolve_shard_name` (a manifest is input: a name
that is not a plain shard file inside DIR, such as `pipe:...`, an absolute path or `../x.tar`,
is reported and never opened). Then one Ray task per shard reads the file once, streaming it
through sha256 and the tar parser together, and checks its size and checksum against the
manifest, its sample count, and that every member belongs to a sample key; with `--deep` it
also decodes every sample with the schema (JPEG, PNG, npy, JSON). The driver checks that no
key appears twice in the directory, that no temporary is left over and that every source is
complete. Exit status 1 on any problem. Without --ray-address a local Ray is started with
--workers CPUs (default: all cores) and shut down at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hvdistill.data.schema import SchemaError, decode_sample
from hvdistill.data.shard_names import UnsafeShardName, resolve_shard_name
from sharding.manifest import MANIFEST, read_json
from sharding.writer import TMP_SUFFIX

_READ_BLOCK = 1 << 20
_ENTRY_FIELDS = ("name", "bytes", "samples", "sha256")


class HashingReader:
    """A read-only file that hashes and counts every byte read through it."""

    def __init__(self, file: BinaryIO):
        self._file, self.digest, self.size = file, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever the tar parser left, e.g. the end-of-archive padding."""
        while self.read(_READ_BLOCK):
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


def check_shard(path: str, entry: dict[str, Any], deep: bool) -> tuple[list[str], list[str]]:
    """(problems, sample keys) of one shard; reads the file exactly once."""
    name = entry["name"]
    if not os.path.isfile(path):
        return [f"{name}: missing"], []
    problems, keys = [], []
    with open(path, "rb") as f:
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
    if reader.size != entry["bytes"]:
        problems.append(f"{name}: {reader.size} bytes, manifest says {entry['bytes']}")
    if reader.digest.hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest")
    if len(keys) != entry["samples"]:
        problems.append(f"{name}: {len(keys)} samples, manifest says {entry['samples']}")
    return problems, keys


def _entries(out_dir: Path, manifest: dict[str, Any]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(path, entry) of every manifest entry that names a shard inside `out_dir`; problems of the rest."""
    where = out_dir / MANIFEST
    found, problems = [], []
    for entry in manifest.get("shards", []):
        if not isinstance(entry, dict) or any(f not in entry for f in _ENTRY_FIELDS):
            problems.append(f"{where}: malformed shard entry {str(entry)[:200]!r}")
            continue
        try:
            found.append((resolve_shard_name(out_dir, entry["name"], where), entry))
        except UnsafeShardName as e:
            problems.append(str(e))
    return found, problems


def verify_directory(out_dir: Path, deep: bool = False) -> list[str]:
    """Every problem found in a shard directory (shards checked by Ray tasks in parallel)."""
    import ray

    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        return [f"{out_dir / MANIFEST}: missing (the sharding job did not finish)"]
    try:
        manifest = read_json(out_dir / MANIFEST)
    except (OSError, ValueError) as e:
        return [f"{out_dir / MANIFEST}: unreadable ({e})"]
    entries, problems = _entries(out_dir, manifest)
    task = ray.remote(num_cpus=1)(check_shard)
    refs = {task.remote(str(path), entry, deep): entry["name"] for path, entry in entries}
    keys: Counter = Counter()
    for ref, name in refs.items():
        try:
            shard_problems, shard_keys = ray.get(ref)
        except ray.exceptions.RayError as e:
            shard_problems, shard_keys = [f"{name}: check crashed: {str(e).strip().splitlines()[-1]}"], []
        problems += shard_problems
        keys.update(shard_keys)
    problems += [f"key {k} appears {n} times" for k, n in sorted(keys.items()) if n > 1]
    problems += [f"{p.name}: leftover temporary file" for p in sorted(out_dir.glob(f"*{TMP_SUFFIX}"))]
    incomplete = [
        f"{s.get('dataset')} {s.get('split')}" for s in manifest["sources"] if not s.get("complete")
    ]
    problems += [f"{s}: not every unit finished; re-run its shard command" for s in incomplete]
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill shard verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="shard directory holding manifest.json")
    p.add_argument("--deep", action="store_true", help="also decode every sample (images included)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster; default: local")
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers <= 0:
        print("hvdistill shard verify: --workers must be >= 1", file=sys.stderr)
        return 2
    import ray

    from sharding.job import init_ray

    started = init_ray(args.ray_address, args.workers or os.cpu_count() or 1)
    try:
        problems = verify_directory(Path(args.dir), deep=args.deep)
    finally:
        if started:
            ray.shutdown()
    if problems:
        print(f"hvdistill shard verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    manifest = json.loads((Path(args.dir) / MANIFEST).read_text())
    depth = "decoded" if args.deep else "checksummed (add --deep to decode)"
    counts = f"{manifest['samples']} samples in {len(manifest['shards'])} shards"
    print(f"hvdistill shard verify: OK, {counts}, {depth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
