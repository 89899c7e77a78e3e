"""The class maps of the downstream labels: which training classes each dataset's shards carry.

Shards store labels already mapped to training classes (hvdistill/data/sources/labels.py),
index = class id, 0 = ignore:
- nuScenes: lidarseg 32 -> 16 classes with the devkit's own mapper; 17 outputs (ignore + 16).
- SemanticKITTI: raw ids -> 19 classes with semantic-kitti.yaml's learning map; 20 outputs.
The synthetic world writes real nuScenes-lidarseg and SemanticKITTI labels (each world class
names its lidarseg category and its KITTI raw id, hvdistill/synthetic/classes.py), so its shards
carry the same maps under the same names: it needs no map of its own.

A sample's `meta["label_map"]` names the map its labels went through; a scan whose map is not
the dataset's is refused as a bad sample rather than scored against the wrong class names.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdistill.data.sources.labels import (
    NUSCENES_CLASS_NAMES,
    NUSCENES_LABEL_MAP,
    SEMANTICKITTI_CLASS_NAMES,
    SEMANTICKITTI_LABEL_MAP,
)


@dataclass(frozen=True)
class ClassMap:
    """The training classes of one dataset's labels: names by class id, id 0 = ignore."""

    dataset: str
    label_map: str  # the name shards record in meta["label_map"]
    names: tuple[str, ...]  # index = class id

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier: every class id, the ignore label included (never predicted)."""
        return len(self.names)


CLASS_MAPS: dict[str, ClassMap] = {
    "nuscenes": ClassMap("nuscenes", NUSCENES_LABEL_MAP, NUSCENES_CLASS_NAMES),
    "semantickitti": ClassMap("semantickitti", SEMANTICKITTI_LABEL_MAP, SEMANTICKITTI_CLASS_NAMES),
}


def class_map(dataset: str) -> ClassMap:
    """The class map of `dataset` ("nuscenes" | "semantickitti")."""
    if dataset not in CLASS_MAPS:
        raise ValueError(f"no class map for dataset {dataset!r}; known: {sorted(CLASS_MAPS)}")
    return CLASS_MAPS[dataset]
