"""Label fractions by the SLidR protocol: which labelled training scans a fine-tuning run may use.

A fraction f of the labels keeps 1 in k = 1 / f units of the training split (f must be 1 / k
for an integer k: 0.01, 0.05, 0.1, 0.25, 1.0 give k = 100, 20, 10, 4, 1):
- nuScenes: the unit is the scene. SLidR walks the training scenes and keeps the k-th, 2k-th, ...
  (a counter incremented before the test `counter % k == 0`), with every keyframe of a kept
  scene. Here the scenes are ordered by name (SLidR uses the devkit's scene-table order; the
  shards carry scene names, not that order), so scene i (1-based, by name) is kept when
  i % k == 0: floor(n / k) of n scenes.
- SemanticKITTI: the unit is the scan. SLidR sorts the training scans by path (sequence, frame)
  and keeps every k-th from the first (`files[::k]`): ceil(n / k) of n scans.

The rule is deterministic (no seed: every run and every seed of a sweep uses the same labels)
and a `LabelSplit` records it all: dataset, fraction, k, the rule in words, where the list of
units came from, how many there were, which units were kept and the sample keys kept. It is
saved as JSON beside the run (`save`) and logged. Evaluation never goes through a split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPLIT_FILE = "label_split.json"
FRAME_DIGITS = 12  # frames compared as zero-padded numbers (KITTI stores 6 digits)
FRACTION_TOLERANCE = 1e-9  # relative: a fraction must equal 1 / k to this precision
RULES = {
    "nuscenes": (
        "scene",
        "SLidR: training scenes ordered by name; scene i (1-based) kept when i % k == 0; "
        "every keyframe of a kept scene",
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
    units_kept: list[str] = field(default_factory=list)  # scene names, or scan keys
    keys: list[str] = field(default_factory=list)  # sample keys kept, sorted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> Path:
        """Write the split as JSON (sorted keys, one value per line); returns `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> LabelSplit:
        """Read a split written by `save` (plain JSON, checked field by field)."""
        data = json.loads(Path(path).read_text())
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != names:
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
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    k = round(1.0 / fraction)
    if abs(k * fraction - 1.0) > FRACTION_TOLERANCE:
        raise ValueError(
            f"label fraction {fraction} is not 1 / k for an integer k (the SLidR protocol keeps 1 in k "
            f"scenes or scans); use e.g. {1 / k:g}"
        )
    return k


def keep_scenes(scenes: Iterable[str], k: int) -> list[str]:
    """The scenes SLidR keeps: ordered by name, the i-th (1-based) when i % k == 0."""
    ordered = sorted(set(scenes))
    return [s for i, s in enumerate(ordered, start=1) if i % k == 0]


def keep_scans(scans: Iterable[ScanRef], k: int) -> list[ScanRef]:
    """The scans SLidR keeps: ordered by (sequence, frame, key), every k-th from the first."""
    return sorted(scans, key=lambda s: (s.scene, s.frame.zfill(FRAME_DIGITS), s.key))[::k]


def make_split(scans: list[ScanRef], dataset: str, fraction: float, source: str = "") -> LabelSplit:
    """The label split of `scans` (the whole labelled training split) for `fraction` of the labels."""
    if dataset not in RULES:
        raise ValueError(f"no label-fraction rule for dataset {dataset!r}; known: {sorted(RULES)}")
    keys = [s.key for s in scans]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{len(keys) - len(set(keys))} sample keys occur twice in the training scans")
    k = keep_every(fraction)
    unit, rule = RULES[dataset]
    if unit == "scene":
        units = sorted({s.scene for s in scans})
        kept_units = keep_scenes(units, k)
        chosen = set(kept_units)
        kept_keys = sorted(s.key for s in scans if s.scene in chosen)
    else:
        units = keys
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
    )
    log.info("%s", split.summary())
    return split
