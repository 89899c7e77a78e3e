"""The shard directory's bookkeeping: work units, done-records, and manifest.json.

Layout of an output directory (a local directory or an object-store prefix, the same names):
    <dataset>-<split>-u<nnnnn>-<nnnn>.tar          shards of a unit drawn from the whole split
    <dataset>-<split>-<chunk>-p<part>-<nnnn>.tar   shards of a per-chunk unit (data.shard_shuffle off)
    _state/sources/<dataset>-<split>.json          what was sharded from where, with which config
    _state/units/<unit>.json                       done-record of one unit, written atomically
                                                   after its shards were put in place
    _state/job.lock                                held by the running job (sharding/lock.py)
    manifest.json                                  assembled from the records above, written last

A unit is `data.shard_task_samples` keys of a source: consecutive keys of a seeded, hash-based
permutation of the whole split (so every shard mixes scenes), or, with `data.shard_shuffle`
off, one chunk (nuScenes scene, SemanticKITTI sequence) or a part of a long chunk. The
done-record is the one commit point: a re-run keeps every unit whose record lists no skipped
sample and redoes the others from scratch, so the manifest equals that of an uninterrupted
run. No wall-clock fields are recorded. Every read and write goes through
hvdistill/storage.py (`Location`); a `Listing` lists a directory once, so deciding the state
of every unit costs two list requests on an object store, not one request per file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvdistill.config import DataConfig
from hvdistill.data.schema import SCHEMA_VERSION
from hvdistill.storage import Location
from sharding.writer import TMP_SUFFIX

MANIFEST = "manifest.json"
STATE_DIR = "_state"
SOURCES_DIR = "sources"  # under STATE_DIR
UNITS_DIR = "units"  # under STATE_DIR
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


def write_json_atomic(path: str | Path | Location, obj: Any) -> None:
    """Write JSON atomically (hvdistill/storage.py: a temporary unique to this call, then a rename
    locally or a move on an object store): readers see the old file or the new one, and
    concurrent writers never share a temporary."""
    Location(path).write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str | Path | Location) -> Any:
    return json.loads(Location(path).read_bytes())


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


def source_record_path(out_dir: str | Path | Location, dataset: str, split: str) -> Location:
    return Location(out_dir) / STATE_DIR / SOURCES_DIR / f"{dataset}-{split}.json"


def unit_record_path(out_dir: str | Path | Location, unit_name: str) -> Location:
    return Location(out_dir) / STATE_DIR / UNITS_DIR / f"{unit_name}.json"


@dataclass
class Listing:
    """One listing of an output directory: the files beside the manifest with their sizes, and the
    units that have a done-record (two list requests on an object store, none per file)."""

    files: dict[str, int]
    records: set[str]

    @classmethod
    def of(cls, out_dir: str | Path | Location) -> Listing:
        out = Location(out_dir)
        units = (out / STATE_DIR / UNITS_DIR).file_sizes()
        return cls(out.file_sizes(), {n.removesuffix(".json") for n in units if n.endswith(".json")})


def unit_files(
    out_dir: str | Path | Location, unit_name: str, names: list[str] | None = None
) -> list[Location]:
    """Shards and temporaries (of any attempt) a unit may have left in `out_dir` (listed now,
    or among `names`, a listing of it)."""
    out = Location(out_dir)
    tmp = re.escape(TMP_SUFFIX)
    pattern = re.compile(rf"^{re.escape(unit_name)}-\d{{4}}\.tar(?:(?:\.[0-9a-f]+)?{tmp})?$")
    names = list(out.file_sizes()) if names is None else names
    return [out / n for n in sorted(names) if pattern.match(n)]


def check_source_record(out_dir: str | Path | Location, record: dict[str, Any]) -> None:
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


def source_units(
    out_dir: str | Path | Location, record: dict[str, Any], done: set[str] | None = None
) -> list[dict[str, Any] | None]:
    """Done-records of a source's units in order; None for a unit not finished (`done`: the
    units with a record, from a Listing; checked one by one without it)."""
    out = []
    for name in record["units"]:
        path = unit_record_path(out_dir, name)
        exists = path.exists() if done is None else name in done
        out.append(read_json(path) if exists else None)
    return out


def source_summary(
    out_dir: str | Path | Location, record: dict[str, Any], done: set[str] | None = None
) -> dict[str, Any]:
    """A source's manifest entry, with totals over its finished units."""
    finished = [u for u in source_units(out_dir, record, done) if u is not None]
    return {
        **record,
        "samples": sum(s["samples"] for u in finished for s in u["shards"]),
        "skipped": sum(len(u["skipped"]) for u in finished),
        "complete": len(finished) == len(record["units"]),
    }


def build_manifest(out_dir: str | Path | Location) -> dict[str, Any]:
    """Assemble manifest.json content from every registered source and its done-records."""
    out = Location(out_dir)
    done = Listing.of(out).records
    sources, shards, skipped = [], [], []
    for name in (out / STATE_DIR / SOURCES_DIR).file_sizes():
        if not name.endswith(".json"):
            continue  # a temporary
        record = read_json(out / STATE_DIR / SOURCES_DIR / name)
        sources.append(source_summary(out, record, done))
        for unit in source_units(out, record, done):
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


def write_manifest(out_dir: str | Path | Location) -> dict[str, Any]:
    """Assemble and write manifest.json: the last write of a job, after every done-record."""
    manifest = build_manifest(out_dir)
    write_json_atomic(Location(out_dir) / MANIFEST, manifest)
    return manifest
