"""The interface every raw dataset source implements (nuScenes, SemanticKITTI, Argoverse 2).

Sharding splits a source into chunks (nuScenes scenes, SemanticKITTI sequences, Argoverse 2
logs), converts each chunk in a Ray task, and reads samples by key; the same keys are the
WebDataset keys of the shards (nuScenes sample token; SemanticKITTI "SEQ_FRAME"; Argoverse 2
"<log id>_<LiDAR t_ns>"). `plan(key)` resolves a key into
a devkit-free `ReadPlan` (plan.py) that sharding sends to its workers instead of the source.
"""

from __future__ import annotations

from typing import Protocol

from hvdistill.data.sample import Sample
from hvdistill.data.sources.plan import ReadPlan


class DataSource(Protocol):
    name: str  # "nuscenes" | "semantickitti" | "argoverse2"
    version: str  # nuScenes table version, "semantickitti", "av2-sensor"
    split: str  # configured split ("train" | "val"); with a split file, its list is the split
    camera_names: list[str]  # camera order of Sample.cameras (and of pairs' camera index)
    label_map_name: str  # e.g. "nuscenes-lidarseg-16", "semantickitti-19"; "" = no labels

    def chunks(self) -> list[str]:
        """Chunk ids of the configured split, in a deterministic order."""
        ...

    def keys(self, chunk: str) -> list[str]:
        """Sample keys of one chunk, in temporal order."""
        ...

    def read(self, key: str) -> Sample:
        """The full-resolution sample (no pairs, no superpixels); raises SampleReadError."""
        ...

    def plan(self, key: str) -> ReadPlan:
        """What `read(key)` needs, resolved: `read_plan(plan(key))` equals `read(key)`.

        Never raises SampleReadError: damage found while planning is the plan's `error`."""
        ...
