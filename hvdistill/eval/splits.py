"""Label fractions by the SLidR protocol: which labelled training scans a fine-tuning run may use.

A fraction f of the labels keeps 1 in k = 1 / f units of the training split (f must be 1 / k
for an integer k: 0.01, 0.05, 0.1, 0.25, 1.0 give k = 100, 20, 10, 4, 1; the rule is
`label_fraction_k` of hvdistill/config/downstream.py, which the config checks share):
- nuScenes: the unit is the scene. SLidR walks the devkit's scene table (`nusc.scene`, the
  order of `<version>/scene.json`) and counts the training scenes only: a counter incremented at
  each training scene, the scene kept when `counter % k == 0` (the k-th, 2k-th, ... training
  scene in table order), with every keyframe of a kept scene: floor(n / k) of n scenes. Shards
  carry scene names, not that order, so the table is read (`read_scene_order`) from
  `finetune.scene_table`, else from the nuScenes root of `data.sources` (`find_scene_table`); a
  fraction below 1 without a table is refused rather than split in another order. The counter
  runs over the training scenes the shards hold (a scene whose every sample was quarantined at
  sharding time is not counted; SLidR would count it).
- SemanticKITTI: the unit is the scan. SLidR sorts the training scans by path (sequence, frame)
  and keeps every k-th from the first (`files[::k]`): ceil(n / k) of n scans.

The rule is deterministic (no seed: every run and every seed of a sweep uses the same labels)
and a `LabelSplit` records it all: dataset, fraction, k, the rule in words, the order walked
(the scene table's path), where the list of units came from, how many there were, which units
were kept (scene names for nuScenes) and the sample keys kept. It is saved as JSON beside the
run (`save`, atomically) and logged. Evaluation never goes through a split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hvdistill.config.downstream import label_fraction_k
from hvdistill.storage import Location, StorageError, write_atomic

log = logging.getLogger(__name__)

SPLIT_FILE = "label_split.json"
SCENE_TABLE = "scene.json"  # the devkit's scene table in <root>/<version>/
MAX_TABLE_BYTES = 64 << 20  # nuScenes v1.0-trainval's scene.json is ~0.3 MB
FRAME_DIGITS = 12  # frames compared as zero-padded numbers (KITTI stores 6 digits)
RULES = {
    "nuscenes": (
        "scene",
        "SLidR: the devkit's scene table walked in its order, a counter over the training scenes; "
        "the scene at counter i (1-based) kept when i % k == 0; every keyframe of a kept scene",
    ),
    "semantickitti": (
        "scan",
        "SLidR: training scans ordered by (sequence, frame); scan i (0-based) kept when i % k == 0",
    ),
}


@dataclass(frozen=True, slots=True)
class ScanRef:
    """One labelled training scan: its sample key, scene (nuScenes) or sequence (KITTI), frame."""

    key: str
    scene: str
    frame: str = ""  # SemanticKITTI frame number as stored ("000123"); "" for nuScenes


@dataclass
class LabelSplit:
    """The scans a label fraction keeps, and everything needed to say how they were chosen."""

    dataset: str
    fraction: float
    k: int
    unit: str  # "scene" | "scan"
    rule: str
    source: str  # where the list of scans came from (shard paths)
    units_total: int
    keys_total: int
    units_kept: list[str] = field(default_factory=list)  # scene names (in the order walked), or scan keys
    keys: list[str] = field(default_factory=list)  # sample keys kept, sorted
    order: str = ""  # what ordered the units: the scene table's path, or the scans' (sequence, frame)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> Path:
        """Write the split as JSON (sorted keys, one value per line), atomically; returns `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> LabelSplit:
        """Read a split written by `save` (plain JSON, checked field by field; `order` may be absent)."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not names - {"order"} <= set(data) <= names:
            raise ValueError(f"{path}: not a label split (fields {sorted(names)})")
        return cls(**data)

    def summary(self) -> str:
        return (
            f"label fraction {self.fraction:g} of {self.dataset}: 1 in {self.k} {self.unit}s, "
            f"{len(self.units_kept)} of {self.units_total} {self.unit}s, "
            f"{len(self.keys)} of {self.keys_total} scans"
        )


def keep_every(fraction: float) -> int:
    """k such that the fraction is 1 / k; ValueError for a fraction that is not one."""
    k, reason = label_fraction_k(fraction)
    if not k:
        raise ValueError(f"label fraction {reason}")
    return k


def read_scene_order(table: str | Path) -> list[str]:
    """Scene names in the order of a devkit scene table: `scene.json`, or the folder holding it
    (a local path or an object-store URI); ValueError naming the file when it is not one."""
    location = Location(table)
    if location.is_dir():
        location = location / SCENE_TABLE
    try:
        rows = json.loads(location.read_bytes(limit=MAX_TABLE_BYTES))
    except (StorageError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"finetune.scene_table: {location} is not a readable nuScenes scene table ({type(e).__name__}: "
            f"{str(e)[:200]}); give <nuScenes root>/<version>/{SCENE_TABLE}"
        ) from None
    names = (
        [r.get("name") for r in rows]
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
        else []
    )
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"finetune.scene_table: {location} is not a nuScenes scene table (a JSON list of scenes, each "
            f'with a unique "name"); give <nuScenes root>/<version>/{SCENE_TABLE}'
        )
    return names


def find_scene_table(scene_table: str, roots: Iterable[tuple[str, str]]) -> str:
    """`scene_table` when given, else the first `<root>/<version>/scene.json` of the nuScenes
    (root, version) pairs that exists; "" when there is none."""
    if scene_table:
        return scene_table
    for root, version in roots:
        candidate = Location(root) / version / SCENE_TABLE
        try:
            if candidate.is_file():
                return str(candidate)
        except (StorageError, OSError):
            continue
    return ""


def no_table_message(k: int) -> str:
    """Why a nuScenes fraction of 1 / k (k > 1) cannot be split without the scene table, and the fix."""
    return (
        f"a label fraction of 1/{k} on nuScenes keeps 1 in {k} training scenes counted in the devkit's "
        f"scene-table order (SLidR), and no scene table was found: set finetune.scene_table="
        f"<nuScenes root>/<version>/{SCENE_TABLE} (or data.sources with the nuScenes root)"
    )


def keep_scenes(ordered: Iterable[str], training: Iterable[str], k: int) -> list[str]:
    """SLidR's walk: over `ordered` (the scene table), a counter of the `training` scenes; the scene
    at counter i (1-based) kept when i % k == 0. Scenes keep the table's order."""
    wanted, kept, counter = set(training), [], 0
    for scene in dict.fromkeys(ordered):
        if scene in wanted:
            counter += 1
            if counter % k == 0:
                kept.append(scene)
    return kept


def keep_scans(scans: Iterable[ScanRef], k: int) -> list[ScanRef]:
    """The scans SLidR keeps: ordered by (sequence, frame, key), every k-th from the first."""
    return sorted(scans, key=lambda s: (s.scene, s.frame.zfill(FRAME_DIGITS), s.key))[::k]


def _scene_units(
    scans: list[ScanRef], k: int, scene_order: Sequence[str] | None, order_source: str
) -> tuple[list[str], list[str], str]:
    """(training scenes, kept scenes, order description) of nuScenes scans."""
    scenes = sorted({s.scene for s in scans})
    if k == 1:  # every scene: the order only sorts the record
        present = set(scenes)
        walked = [s for s in dict.fromkeys(scene_order or []) if s in present]
        seen = set(walked)
        rest = [s for s in scenes if s not in seen]
        return scenes, walked + rest, order_source or "by name (k = 1: every scene kept)"
    if scene_order is None:
        raise ValueError(no_table_message(k))
    missing = sorted(set(scenes) - set(scene_order))
    if missing:
        raise ValueError(
            f"finetune.scene_table: {order_source or 'the scene table'} lacks {len(missing)} scene(s) of the "
            f"training shards (e.g. {missing[:3]}); give the table of the dataset these shards came from"
        )
    return scenes, keep_scenes(scene_order, scenes, k), order_source


def make_split(
    scans: list[ScanRef],
    dataset: str,
    fraction: float,
    source: str = "",
    scene_order: Sequence[str] | None = None,
    order_source: str = "",
) -> LabelSplit:
    """The label split of `scans` (the whole labelled training split) for `fraction` of the labels.

    nuScenes needs `scene_order` (`read_scene_order` of the devkit's table, named by
    `order_source`) unless the fraction is 1.
    """
    if dataset not in RULES:
        raise ValueError(f"no label-fraction rule for dataset {dataset!r}; known: {sorted(RULES)}")
    keys = [s.key for s in scans]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{len(keys) - len(set(keys))} sample keys occur twice in the training scans")
    k = keep_every(fraction)
    unit, rule = RULES[dataset]
    if unit == "scene":
        units, kept_units, order = _scene_units(scans, k, scene_order, order_source)
        chosen = set(kept_units)
        kept_keys = sorted(s.key for s in scans if s.scene in chosen)
    else:
        units, order = keys, "scans by (sequence, frame)"
        kept_keys = sorted(s.key for s in keep_scans(scans, k))
        kept_units = kept_keys
    if not kept_keys:
        raise ValueError(
            f"label fraction {fraction:g} keeps no {unit} of the {len(units)} training {unit}s of "
            f"{dataset} (1 in {k}); use a larger fraction or more data"
        )
    split = LabelSplit(
        dataset=dataset,
        fraction=float(fraction),
        k=k,
        unit=unit,
        rule=rule,
        source=source,
        units_total=len(units),
        keys_total=len(keys),
        units_kept=list(kept_units),
        keys=kept_keys,
        order=order,
    )
    log.info("%s", split.summary())
    return split
