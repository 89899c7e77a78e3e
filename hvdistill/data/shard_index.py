"""The list of shards a reader streams: manifests read as data, datasets filtered and weighted.

`data.shards` entries are shard directories, `manifest.json` files or bare `.tar` files.

Manifest trust rules (a manifest is input, never a command): the JSON must have this reader's
schema version and well-typed entries; every shard name goes through
`hvdistill/data/shard_names.py` (`resolve_shard_name`: a plain `<name>.tar` inside the
manifest's directory; a URL scheme, `pipe:`, an absolute path, `..` or a symlink out of the
directory is refused). Any violation refuses the whole manifest with an error naming the entry,
at construction: a tampered manifest is not "a bad sample". A bare `.tar` path is the user's
own choice, but it too must be a local file (no URL, no `pipe:`); the reader opens files itself
and never passes a name to webdataset's opener.

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
from pathlib import Path
from typing import Any

from hvdistill.config import DataConfig
from hvdistill.data.sample_checks import SchemaError
from hvdistill.data.schema import SCHEMA_VERSION
from hvdistill.data.shard_names import resolve_shard_name
from hvdistill.data.shard_tar import count_records

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # pipe:, http:, s3:, file: ...


class ManifestError(ValueError):
    """A manifest (or data.shards entry) the reader refuses as a whole; names the entry."""


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One shard to stream: its local path, dataset, split and sample count."""

    path: str
    dataset: str
    split: str
    samples: int  # from the manifest; for a bare .tar, the records its headers index


def _typed(entry: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"{where}: field {name!r} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
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


def _shard_entry(path: Path, i: int, shard: Any) -> ShardEntry:
    where = f"{path}: shards[{i}]"
    if not isinstance(shard, dict):
        raise ManifestError(f"{where}: expected an object, got {shard!r:.80}")
    shard_path = resolve_shard_name(path.parent, shard.get("name"), f"{where} of {path}")
    dataset = _typed(shard, "dataset", str, where)
    if not _DATASET.fullmatch(dataset):
        raise ManifestError(f"{where}: dataset {dataset!r:.80} is not a dataset name")
    samples = _typed(shard, "samples", int, where)
    if samples < 0:
        raise ManifestError(f"{where}: negative sample count {samples}")
    return ShardEntry(str(shard_path), dataset, _typed(shard, "split", str, where), samples)


def _stored_sizes(path: Path, manifest: dict[str, Any], splits: list[str]) -> dict[str, tuple[int, int]]:
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


def manifest_shards(path: Path, splits: list[str]) -> tuple[list[ShardEntry], dict[str, tuple[int, int]]]:
    """(shards of `splits`, {dataset: stored image size}) of one manifest, all entries checked."""
    manifest = _load(path)
    entries = [_shard_entry(path, i, shard) for i, shard in enumerate(manifest["shards"])]
    return [e for e in entries if e.split in splits], _stored_sizes(path, manifest, splits)


def _bare_tar(entry: str) -> ShardEntry:
    path = Path(entry)
    if _URL.match(entry) or not path.is_file():
        raise ManifestError(
            f"data.shards entry {entry!r}: not a shard directory, manifest.json or local .tar file "
            f"(URLs and 'pipe:' commands are not read)"
        )
    samples, problem = count_records(str(path))
    if problem:
        log.warning("%s (counted %d readable records)", problem, samples)
    return ShardEntry(str(path), path.name.split("-")[0], "", samples)


def resolve_shards(
    paths: list[str], splits: list[str] | None = None
) -> tuple[list[ShardEntry], dict[str, tuple[int, int]]]:
    """(every shard of `splits` in manifests, directories and bare .tar paths, sorted by path;
    {dataset: stored image size} the manifests declare)."""
    entries: list[ShardEntry] = []
    sizes: dict[str, tuple[int, int]] = {}
    for entry in paths:
        path = Path(entry)
        manifest = path / MANIFEST if path.is_dir() else path
        if manifest.name == MANIFEST and not _URL.match(entry):
            if not manifest.is_file():
                raise FileNotFoundError(f"{manifest}: no manifest; run `hvdistill shard` first")
            more, more_sizes = manifest_shards(manifest, list(splits or ["train"]))
            entries += more
            for dataset, size in more_sizes.items():
                sizes[dataset] = tuple(max(a, b) for a, b in zip(size, sizes.get(dataset, size)))
        else:
            entries.append(_bare_tar(entry))
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
