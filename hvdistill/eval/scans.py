"""The downstream data path: labelled LiDAR scans read from shards, selected by sample key.

Fine-tuning needs only the points, the labels and the sample's identity, and a label fraction
keeps as few as 1 in 100 training scans. So this path does not stream whole samples through
`ShardDataset` (which would read and decode every record, six JPEGs included, every epoch, to
drop 99% of them); it pre-selects records instead, with the reader's own safe pieces:
- `index_split`: the shards of one split and dataset (`resolve_shards`: manifests read as data,
  shard names trust-checked; a bare .tar path belongs to the split its name carries,
  `<dataset>-<split>-...tar`), each tar indexed from its headers alone (`scan_shard`); a broken
  shard is logged and counted, its readable records kept. A shard on an object store is
  fetched whole (bounded by its manifest entry's size, `data.read_ahead` shards fetching ahead:
  hvdistill/data/shard_fetch.py) and indexed from memory; the references keep no bytes (a split
  would otherwise sit in memory), so a scan's members are later read by ranged requests;
- `scan_refs`: the scene / sequence and frame of every record, from its `meta.json` member only
  (for the label-fraction split, hvdistill/eval/splits.py);
- `ScanDataset`: a map-style dataset over the kept `RecordRef`s (any subset, shuffled by the
  DataLoader) that reads only `points.npy`, `labels.npy`, `pairs.npy` and `meta.json` of a
  record by offset and decodes them with the schema's own checked decoders (npy headers checked
  against the member size, never unpickled), then checks what fine-tuning relies on: finite
  points, one label per point, every label a class of the dataset's map, the map named in the
  meta, and pair point indices that are integers in [0, N). `pairs.npy` gives each point's
  camera view (`in_view`: the point projects into some image; hvdistill/eval/strata.py); a
  record without it is still a good scan, of unknown view (`in_view` None): evaluation keeps
  it in the overall and range scores, leaves it out of the view strata and counts it in
  `scans_without_pairs`.
A record that fails is a bad scan: logged, counted by the loop (`None` in the batch), never
raised. Evaluation reads every record of its split; the label fraction only touches training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from hvdistill.config import DataConfig
from hvdistill.data.intensity import normalised_intensity
from hvdistill.data.sample_checks import SchemaError
from hvdistill.data.schema import LABELS, META, PAIRS, POINTS, decode_npy
from hvdistill.data.shard_fetch import Fetch, fetch_limit, prefetched
from hvdistill.data.shard_index import ShardEntry, resolve_shards
from hvdistill.data.shard_tar import RecordRef, ShardError, scan_bytes, scan_shard
from hvdistill.data.shard_tar import read_members as read_record_members
from hvdistill.eval.classes import ClassMap
from hvdistill.eval.splits import ScanRef
from hvdistill.storage import Location

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LabelledScan:
    """One scan's points and training-class labels."""

    key: str
    points: np.ndarray  # (N, 4) float32 x, y, z (LiDAR frame), intensity on 0-255 (data/intensity.py)
    labels: np.ndarray  # (N,) uint8 training classes, 0 = ignore
    in_view: np.ndarray | None = None  # (N,) bool point projects into a camera; None = no pairs.npy


@dataclass
class SplitRecords:
    """Every record of one split of one dataset, and where they came from."""

    refs: list[RecordRef]
    shards: list[str]
    bad_shards: int = 0


def index_split(data: DataConfig, dataset: str, split: str) -> SplitRecords:
    """The records of `split` shards of `dataset` in `data.shards` (manifests, dirs or .tar paths)."""
    if not data.shards:
        raise ValueError("data.shards: fine-tuning reads labelled shards; set data.shards=[SHARD_DIR]")
    entries, _ = resolve_shards(list(data.shards), [split], data)
    entries = [e for e in entries if e.dataset == dataset and _split_of(e.path, e.split) == split]
    if not entries:
        raise ValueError(
            f"data.shards: no {dataset} shards of split {split!r} in {list(data.shards)}; check "
            f"finetune.dataset, finetune.train_split / finetune.val_split and that the split was sharded"
        )
    records = SplitRecords([], [e.path for e in entries])
    planned = prefetched(entries, lambda e: (e.path, *fetch_limit(e.bytes, data)), data.read_ahead)
    with closing(planned):  # an error stops the read-ahead at once
        for entry, fetch in planned:
            try:
                records.refs.extend(_refs(entry, fetch))
            except ShardError as err:
                records.bad_shards += 1
                log.warning("%s: the records after the damage are lost: %s", entry.path, err)
    return records


def _refs(entry: ShardEntry, fetch: Fetch | None) -> Iterator[RecordRef]:
    """A shard's references: from its local headers, or from its fetched bytes, dropped after."""
    if fetch is None:
        yield from scan_shard(entry.path)
        return
    for ref in scan_bytes(entry.path, fetch.result()):
        yield dataclasses.replace(ref, data=None)


def _split_of(path: str, split: str) -> str:
    """A manifest's split; for a bare .tar, the one its name carries (`<dataset>-<split>-...tar`)."""
    if split:
        return split
    parts = Location(path).name.split("-")
    return parts[1] if len(parts) > 2 else ""


def read_members(ref: RecordRef, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named members of one record, read by offset from a local file or by ranged requests
    from an object store (sizes were bounded when it was indexed); OSError if the shard changed."""
    return read_record_members(ref, names)


def _meta(ref: RecordRef, member: bytes | None) -> dict[str, Any]:
    if ref.problem:
        raise SchemaError(ref.problem)
    if member is None:
        raise SchemaError(f"{META}: missing")
    try:
        meta = json.loads(member)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SchemaError(f"{META}: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("key") != ref.key or not isinstance(meta.get("meta"), dict):
        raise SchemaError(f"{META}: not the meta of record {ref.key!r}")
    return meta


def scan_ref(ref: RecordRef) -> ScanRef:
    """The record's key, scene (nuScenes scene name, SemanticKITTI sequence) and frame, from meta.json."""
    inner = _meta(ref, read_members(ref, (META,)).get(META))["meta"]
    scene, frame = inner.get("scene"), inner.get("frame", "")
    if not isinstance(scene, str) or not scene or not isinstance(frame, str):
        raise SchemaError(f"{META}: record {ref.key!r} names no scene / sequence")
    return ScanRef(ref.key, scene, frame)


def scan_refs(refs: list[RecordRef]) -> tuple[list[ScanRef], int]:
    """(ScanRef of every readable record, number of records whose meta was unusable)."""
    out, bad = [], 0
    for ref in refs:
        try:
            out.append(scan_ref(ref))
        except (SchemaError, OSError) as e:
            bad += 1
            log.warning("skipping record %s of %s for the label split: %s", ref.key, ref.shard, e)
    return out, bad


def decode_scan(ref: RecordRef, cmap: ClassMap, with_view: bool = True) -> LabelledScan:
    """Points and labels of one record, checked, and with `with_view` each point's camera view
    (training never scores by view, so its scans skip reading pairs.npy); SchemaError names what
    is wrong."""
    members = read_members(ref, (POINTS, LABELS, PAIRS, META) if with_view else (POINTS, LABELS, META))
    meta = _meta(ref, members.get(META))
    if LABELS not in members:
        raise SchemaError(f"{LABELS}: missing (an unlabelled scan cannot be fine-tuned or evaluated on)")
    if POINTS not in members:
        raise SchemaError(f"{POINTS}: missing")
    label_map = meta["meta"].get("label_map")
    if label_map != cmap.label_map:
        raise SchemaError(f"{META}: labels of map {label_map!r}, not {cmap.dataset}'s {cmap.label_map!r}")
    points = decode_npy(members[POINTS], np.float32, 2, columns=4, member=POINTS)  # (N, 4)
    labels = decode_npy(members[LABELS], np.uint8, 1, member=LABELS)  # (N,)
    if len(labels) != len(points):
        raise SchemaError(f"{LABELS}: {len(labels)} labels for {len(points)} points")
    if not np.isfinite(points).all():
        raise SchemaError(f"{POINTS}: non-finite values")
    if len(labels) and int(labels.max()) >= cmap.num_classes:
        raise SchemaError(
            f"{LABELS}: class {int(labels.max())} is not one of {cmap.label_map}'s {cmap.num_classes}"
        )
    in_view = _in_view(members[PAIRS], len(points)) if PAIRS in members else None
    return LabelledScan(ref.key, normalised_intensity(points, cmap.dataset), labels, in_view)


def _in_view(member: bytes, n: int) -> np.ndarray:
    """(N,) bool: the points whose index column 0 of the (M, 5) pairs names; SchemaError if an
    index is not an integer in [0, n)."""
    index = decode_npy(member, np.float32, 2, columns=5, member=PAIRS)[:, 0]  # (M,) float32
    if len(index) and not (np.all(index == np.round(index)) and index.min() >= 0 and index.max() < n):
        raise SchemaError(
            f"{PAIRS}: point indices must be integers in [0, {n}); got {index.min()}..{index.max()}"
        )
    in_view = np.zeros(n, dtype=bool)
    in_view[index.astype(np.int64)] = True
    return in_view


class ScanDataset(Dataset):
    """Map-style dataset over record references: item i = `prepare(scan, rng)`, or None for a bad scan.

    `rng` is seeded by (seed, epoch, index): the same augmentation whatever the DataLoader's
    worker count; `set_epoch` before each epoch's iterator (workers are not persistent).
    """

    def __init__(
        self,
        refs: list[RecordRef],
        cmap: ClassMap,
        prepare: Callable[[LabelledScan, np.random.Generator], Any],
        seed: int = 0,
        with_view: bool = True,
    ):
        self.refs, self.cmap, self.prepare, self.seed, self.epoch = list(refs), cmap, prepare, int(seed), 0
        self.with_view = with_view  # read pairs.npy for the view strata (evaluation only)

    def __len__(self) -> int:
        return len(self.refs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Any:
        ref = self.refs[index]
        try:
            scan = decode_scan(ref, self.cmap, self.with_view)
        except (SchemaError, OSError) as e:
            log.warning("skipping bad scan %s in %s: %s", ref.key, ref.shard, e)
            return None
        return self.prepare(scan, np.random.default_rng([self.seed, self.epoch, index]))
