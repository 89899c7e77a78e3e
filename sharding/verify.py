"""`hvdistill shard verify DIR`: re-read every shard of a manifest and check it.

Checks per shard: the file exists, its size and sha256 match the manifest, it holds the
listed number of samples, every sample decodes with the schema, and no key appears twice in
the directory. Leftover temporary files are reported too. Exit status 1 on any problem.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hvdistill.data.schema import SchemaError, decode_sample
from sharding.manifest import MANIFEST, read_json
from sharding.writer import TMP_SUFFIX, file_sha256


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records {"__key__": key, member: bytes} of a tar, grouped by key in file order."""
    record: dict[str, Any] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, member = info.name.partition(".")
            if record and record["__key__"] != key:
                yield record
                record = {}
            record["__key__"] = key
            record[member] = tar.extractfile(info).read()
    if record:
        yield record


def verify_shard(path: Path, entry: dict[str, Any], keys: Counter) -> list[str]:
    """Problems of one shard (empty list when it is sound)."""
    if not path.exists():
        return [f"{entry['name']}: missing"]
    problems = []
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"{entry['name']}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
    if file_sha256(path) != entry["sha256"]:
        problems.append(f"{entry['name']}: sha256 differs from the manifest")
    count = 0
    try:
        for record in iter_records(path):
            count += 1
            keys[record["__key__"]] += 1
            try:
                decode_sample(record)
            except SchemaError as e:
                problems.append(f"{entry['name']}: sample {record['__key__']}: {e}")
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{entry['name']}: unreadable tar: {e}")
    if count != entry["samples"]:
        problems.append(f"{entry['name']}: {count} samples, manifest says {entry['samples']}")
    return problems


def verify_directory(out_dir: Path) -> list[str]:
    """Every problem found in a shard directory."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        return [f"{out_dir / MANIFEST}: missing (the sharding job did not finish)"]
    manifest = read_json(out_dir / MANIFEST)
    keys: Counter = Counter()
    problems = []
    for entry in manifest["shards"]:
        problems += verify_shard(out_dir / entry["name"], entry, keys)
    problems += [f"key {k} appears {n} times" for k, n in sorted(keys.items()) if n > 1]
    problems += [f"{p.name}: leftover temporary file" for p in sorted(out_dir.glob(f"*{TMP_SUFFIX}"))]
    incomplete = [s["dataset"] + " " + s["split"] for s in manifest["sources"] if not s["complete"]]
    problems += [f"{s}: not every unit finished; re-run its shard command" for s in incomplete]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvdistill shard verify", description=__doc__)
    parser.add_argument("dir", help="shard directory holding manifest.json")
    args = parser.parse_args(argv)
    problems = verify_directory(Path(args.dir))
    if problems:
        print(f"hvdistill shard verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    manifest = read_json(Path(args.dir) / MANIFEST)
    print(f"hvdistill shard verify: OK, {manifest['samples']} samples in {len(manifest['shards'])} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
