"""The list of shards a reader streams: manifests read as data, datasets filtered and weighted.

`data.shards` entries are shard directories, `manifest.json` files or bare `.tar` files, each
local or on an object store (`s3://bucket/prefix` holding a manifest.json,
`s3://bucket/prefix/manifest.json`, `s3://bucket/prefix/x.tar`; hvdistill/storage.py is the
only place that reads a URI). An object-store entry is told apart by its name alone (a prefix
has no directory to test): `manifest.json`, a `.tar` name, or else a prefix whose manifest.json
is read.

Manifest trust rules (a manifest is input, never a command), the same local and remote: it is
read with a size limit (`MANIFEST_MAX_BYTES`); the JSON must have this reader's schema version
and well-typed entries; every shard name goes through `hvdistill/data/shard_names.py`
(`resolve_shard_location`: a plain `<name>.tar` inside the manifest's own directory or prefix; a
URL scheme, `pipe:`, an absolute path, `/`, `..` or, locally, a symlink out of the directory is
refused). Any violation refuses the whole manifest with a `ManifestError` naming the entry, at
construction: a tampered manifest is not "a bad sample". Each entry's `bytes` (when present)
bounds what the reader fetches of an object-store shard. A bare `.tar` is the user's own
choice, but it too must be a local file or an object of a supported store (no URL, no `pipe:`);
a remote one is fetched once here to count its records (bounded by
`shard_fetch.bare_tar_limit`). The reader opens files itself and never passes a name to
webdataset's opener.

Datasets: `data.datasets` (empty = all) filters the shards; a dataset left in without a weight
in `data.sources` is refused rather than mixed in at a default weight. Shards whose images are
larger than `data.stored_image_width` x `data.stored_image_height` are refused (the reader
bounds every image by that size before decoding).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from hvdistill.config import DataConfig
from hvdistill.data.sample_checks import SchemaError
from hvdistill.data.schema import SCHEMA_VERSION
from hvdistill.data.shard_fetch import fetch_limit, fetch_whole
from hvdistill.data.shard_names import ManifestError, resolve_shard_location
from hvdistill.data.shard_tar import ShardError, count_records
from hvdistill.storage import Location, StorageError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
# A manifest entry takes ~250 bytes: 64 MiB list ~250k shards (~64 TB of 256 MB shards), and
# bound what an untrusted manifest makes the reader hold before a single check has run.
MANIFEST_MAX_BYTES = 64 << 20
_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NOT_A_SHARD = (
    "not a shard directory, manifest.json or local .tar file, nor one on s3:// or gs:// "
    "(URLs and 'pipe:' commands are not read)"
)


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One shard to stream: its local path or object URI, dataset, split, sample count, size."""

    path: str
    dataset: str
    split: str
    samples: int  # from the manifest; for a bare .tar, the records its headers index
    bytes: int = 0  # the manifest's size (a fetched bare .tar: its size); 0 = not stated


def _typed(entry: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"{where}: field {name!r} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _load(path: Location) -> dict[str, Any]:
    if path.size() > MANIFEST_MAX_BYTES:
        raise ManifestError(
            f"{path}: {path.size()} bytes, more than a manifest may hold ({MANIFEST_MAX_BYTES}); "
            f"not a manifest written by `hvdistill shard`"
        )
    try:
        manifest = json.loads(path.read_bytes(MANIFEST_MAX_BYTES))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"{path}: not a readable manifest ({type(e).__name__}: {e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ManifestError(f"{path}: not a shard manifest (no 'shards' list)")
    if manifest.get("schema") != SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: shard schema {manifest.get('schema')!r:.20} is not this reader's "
            f"{SCHEMA_VERSION!r}; re-shard the data with this version"
        )
    return manifest


def _shard_entry(path: Location, i: int, shard: Any) -> ShardEntry:
    where = f"{path}: shards[{i}]"
    if not isinstance(shard, dict):
        raise ManifestError(f"{where}: expected an object, got {shard!r:.80}")
    shard_path = resolve_shard_location(path.parent, shard.get("name"), f"{where} of {path}")
    dataset = _typed(shard, "dataset", str, where)
    if not _DATASET.fullmatch(dataset):
        raise ManifestError(f"{where}: dataset {dataset!r:.80} is not a dataset name")
    samples = _typed(shard, "samples", int, where)
    if samples < 0:
        raise ManifestError(f"{where}: negative sample count {samples}")
    size = _typed(shard, "bytes", int, where) if "bytes" in shard else 0
    if size < 0:
        raise ManifestError(f"{where}: negative size {size}")
    return ShardEntry(str(shard_path), dataset, _typed(shard, "split", str, where), samples, size)


def _stored_sizes(path: Location, manifest: dict[str, Any], splits: list[str]) -> dict[str, tuple[int, int]]:
    """{dataset: (width, height)} of the stored images each sharded source declares."""
    sizes = {}
    for source in manifest.get("sources", []) if isinstance(manifest.get("sources"), list) else []:
        if not isinstance(source, dict) or source.get("split") not in splits:
            continue
        config = source.get("config") if isinstance(source.get("config"), dict) else {}
        width, height = config.get("stored_image_width"), config.get("stored_image_height")
        if isinstance(width, int) and isinstance(height, int) and isinstance(source.get("dataset"), str):
            sizes[source["dataset"]] = (width, height)
        if source.get("complete") is False:
            log.warning(
                "%s: %s %s was not completely sharded (an interrupted job?); re-run `hvdistill "
                "shard` to finish it",
                path,
                source.get("dataset"),
                source.get("split"),
            )
    return sizes


def manifest_shards(
    path: Location | str, splits: list[str]
) -> tuple[list[ShardEntry], dict[str, tuple[int, int]]]:
    """(shards of `splits`, {dataset: stored image size}) of one manifest, all entries checked."""
    path = Location(path)
    manifest = _load(path)
    entries = [_shard_entry(path, i, shard) for i, shard in enumerate(manifest["shards"])]
    return [e for e in entries if e.split in splits], _stored_sizes(path, manifest, splits)


def entry_location(entry: str) -> Location:
    """The Location of a data.shards entry; ManifestError for a URL, a command or a bad URI."""
    try:
        return Location(entry)
    except StorageError as e:
        raise ManifestError(f"data.shards entry {entry!r:.120}: {_NOT_A_SHARD}: {e}") from e


def manifest_location(location: Location) -> Location | None:
    """The manifest a data.shards entry names (a directory's or prefix's manifest.json, or the
    file itself), or None for a bare .tar (see the module docstring)."""
    if location.name == MANIFEST:
        return location
    if location.remote:
        return None if location.name.endswith(".tar") else location / MANIFEST
    return location / MANIFEST if location.local.is_dir() else None


def _bare_tar(entry: str, location: Location, cfg: DataConfig) -> ShardEntry:
    if not location.is_file():
        raise ManifestError(f"data.shards entry {entry!r}: {_NOT_A_SHARD}")
    data, size = None, 0
    if location.remote:
        try:
            data = fetch_whole(str(location), *fetch_limit(0, cfg))
        except ShardError as e:
            raise ManifestError(f"data.shards entry {e}") from e
        size = len(data)
    samples, problem = count_records(str(location), data)
    if problem:
        log.warning("%s (counted %d readable records)", problem, samples)
    return ShardEntry(str(location), location.name.split("-")[0], "", samples, size)


def resolve_shards(
    paths: list[str], splits: list[str] | None = None, cfg: DataConfig | None = None
) -> tuple[list[ShardEntry], dict[str, tuple[int, int]]]:
    """(every shard of `splits` in manifests, directories / prefixes and bare .tar paths, sorted
    by path; {dataset: stored image size} the manifests declare). `cfg` bounds bare remote .tar
    files (shard_fetch.fetch_limit; the defaults when None)."""
    entries: list[ShardEntry] = []
    sizes: dict[str, tuple[int, int]] = {}
    for entry in paths:
        location = entry_location(entry)
        manifest = manifest_location(location)
        if manifest is None:
            entries.append(_bare_tar(entry, location, cfg or DataConfig()))
            continue
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no manifest; run `hvdistill shard` first")
        more, more_sizes = manifest_shards(manifest, list(splits or ["train"]))
        entries += more
        for dataset, size in more_sizes.items():
            sizes[dataset] = tuple(max(a, b) for a, b in zip(size, sizes.get(dataset, size)))
    return sorted(entries, key=lambda e: e.path), sizes


def select_datasets(entries: list[ShardEntry], cfg: DataConfig, where: str) -> list[ShardEntry]:
    """Apply data.datasets; refuse a dataset without a weight in data.sources."""
    present = sorted({e.dataset for e in entries})
    if cfg.datasets:
        absent = sorted(set(cfg.datasets) - set(present))
        if absent:
            raise ValueError(f"data.datasets: {absent} not in the shards of {where} (they hold {present})")
        entries = [e for e in entries if e.dataset in cfg.datasets]
    weighted = {s.name for s in cfg.sources}
    unweighted = sorted({e.dataset for e in entries} - weighted)
    if unweighted:
        raise ValueError(
            f"data.shards: the shards of {where} hold dataset(s) {unweighted} without a weight in "
            f"data.sources (which names {sorted(weighted)}); add a data.sources entry with its "
            f"weight, or leave it out with data.datasets={sorted(weighted & set(present))}"
        )
    return entries


def check_stored_sizes(sizes: dict[str, tuple[int, int]], cfg: DataConfig, datasets: set[str]) -> None:
    """Refuse shards whose declared images exceed the size the reader bounds decoding by."""
    for dataset, (width, height) in sorted(sizes.items()):
        if dataset in datasets and (width > cfg.stored_image_width or height > cfg.stored_image_height):
            raise ValueError(
                f"data.stored_image_width/height: the {dataset} shards store images up to "
                f"{width}x{height}, larger than {cfg.stored_image_width}x{cfg.stored_image_height}; "
                f"set data.stored_image_width={width} data.stored_image_height={height}"
            )
