"""The shard directory's bookkeeping: work units, done-records, and manifest.json.

Layout of an output directory:
    <dataset>-<split>-u<nnnnn>-<nnnn>.tar          shards of a unit drawn from the whole split
    <dataset>-<split>-<chunk>-p<part>-<nnnn>.tar   shards of a per-chunk unit (data.shard_shuffle off)
    _state/sources/<dataset>-<split>.json          what was sharded from where, with which config
    _state/units/<unit>.json                       done-record of one unit, written atomically
                                                   after its shards were renamed into place
    _state/job.lock                                held by the running job (sharding/lock.py)
    manifest.json                                  assembled from the records above

A unit is `data.shard_task_samples` keys of a source: consecutive keys of a seeded, hash-based
permutation of the whole split (so every shard mixes scenes), or, with `data.shard_shuffle`
off, one chunk (nuScenes scene, SemanticKITTI sequence) or a part of a long chunk. The
done-record is the one commit point: a re-run keeps every unit whose record lists no skipped
sample and redoes the others from scratch, so the manifest equals that of an uninterrupted
run. No wall-clock fields are recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvdistill.config import DataConfig
from hvdistill.data.schema import SCHEMA_VERSION
from sharding.writer import TMP_SUFFIX, attempt_token

MANIFEST = "manifest.json"
STATE_DIR = "_state"
FORMAT = "hvdistill-webdataset"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass
class Unit:
    """One Ray task's worth of samples: a slice of the shuffled split, or of one chunk."""

    dataset: str
    split: str
    chunk: str  # the chunk of a per-chunk unit; "" for a unit drawn from the whole split
    part: int  # part within the chunk, or the unit's index in the split
    keys: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if not self.chunk:
            return f"{self.dataset}-{self.split}-u{self.part:05d}"
        return f"{self.dataset}-{self.split}-{_UNSAFE.sub('_', self.chunk)}-p{self.part:03d}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary unique to this call, fsync, rename: readers see the old file or
    the new one, and concurrent writers never share a temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{attempt_token()}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sharding_config(cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that decide shard contents and names."""
    return {
        "schema": SCHEMA_VERSION,
        "stored_image_width": cfg.stored_image_width,
        "stored_image_height": cfg.stored_image_height,
        "jpeg_quality": cfg.jpeg_quality,
        "min_depth": cfg.min_depth,
        "image_border": cfg.image_border,
        "superpixels": asdict(cfg.superpixels),
        "shard_size_mb": cfg.shard_size_mb,
        "shard_task_samples": cfg.shard_task_samples,
        "shard_shuffle": cfg.shard_shuffle,
        "shard_shuffle_seed": cfg.shard_shuffle_seed,
        "cameras": list(cfg.cameras),
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def source_record_path(out_dir: Path, dataset: str, split: str) -> Path:
    return Path(out_dir) / STATE_DIR / "sources" / f"{dataset}-{split}.json"


def unit_record_path(out_dir: Path, unit_name: str) -> Path:
    return Path(out_dir) / STATE_DIR / "units" / f"{unit_name}.json"


def unit_files(out_dir: Path, unit_name: str) -> list[Path]:
    """Shards and temporaries (of any attempt) a unit may have left in `out_dir`."""
    tmp = re.escape(TMP_SUFFIX)
    pattern = re.compile(rf"^{re.escape(unit_name)}-\d{{4}}\.tar(?:(?:\.[0-9a-f]+)?{tmp})?$")
    return sorted(p for p in Path(out_dir).iterdir() if pattern.match(p.name))


def check_source_record(out_dir: Path, record: dict[str, Any]) -> None:
    """Register a source in `out_dir`, or refuse if it was sharded there differently."""
    path = source_record_path(out_dir, record["dataset"], record["split"])
    if path.exists():
        old = read_json(path)
        fields = ("config_hash", "root", "version", "units", "keys_hash", "label_map", "camera_names")
        changed = [f for f in fields if old.get(f) != record.get(f)]
        if changed:
            raise ValueError(
                f"{out_dir} already holds {record['dataset']} {record['split']} shards made with a "
                f"different {', '.join(changed)}; use a new --out directory, or delete {path} "
                f"and its shards to redo them"
            )
        return
    write_json_atomic(path, record)


def source_units(out_dir: Path, record: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Done-records of a source's units in order; None for a unit not finished."""
    out = []
    for name in record["units"]:
        path = unit_record_path(out_dir, name)
        out.append(read_json(path) if path.exists() else None)
    return out


def source_summary(out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A source's manifest entry, with totals over its finished units."""
    done = [u for u in source_units(out_dir, record) if u is not None]
    return {
        **record,
        "samples": sum(s["samples"] for u in done for s in u["shards"]),
        "skipped": sum(len(u["skipped"]) for u in done),
        "complete": len(done) == len(record["units"]),
    }


def build_manifest(out_dir: Path) -> dict[str, Any]:
    """Assemble manifest.json content from every registered source and its done-records."""
    out_dir = Path(out_dir)
    sources, shards, skipped = [], [], []
    for path in sorted((out_dir / STATE_DIR / "sources").glob("*.json")):
        record = read_json(path)
        sources.append(source_summary(out_dir, record))
        for unit in source_units(out_dir, record):
            if unit is None:
                continue
            tag = {"dataset": record["dataset"], "split": record["split"], "unit": unit["unit"]}
            shards += [{**s, **tag} for s in unit["shards"]]
            skipped += [{**s, **tag} for s in unit["skipped"]]  # each names its own chunk
    for s in sources:
        s.pop("units", None)
    return {
        "format": FORMAT,
        "schema": SCHEMA_VERSION,
        "sources": sources,
        "shards": sorted(shards, key=lambda s: s["name"]),
        "skipped": sorted(skipped, key=lambda s: (s["dataset"], s["split"], s["key"])),
        "samples": sum(s["samples"] for s in shards),
    }


def write_manifest(out_dir: Path) -> dict[str, Any]:
    manifest = build_manifest(out_dir)
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
    return manifest
