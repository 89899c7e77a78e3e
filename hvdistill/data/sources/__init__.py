"""Raw dataset sources (nuScenes through nuscenes-devkit, SemanticKITTI, Argoverse 2) behind one protocol.

`build_source(cfg)` turns a `SourceConfig` into a `DataSource` (see base.py): chunks (scenes /
sequences / logs), keys (sample tokens / "SEQ_FRAME" / "LOG_TNS") and `read(key) -> Sample`, raising
`SampleReadError` for a damaged sample and `DatasetLayoutError` for a root that cannot be opened.
`plan(key)` gives the devkit-free `ReadPlan` of a key (plan.py), which `read_plan` reads anywhere.
"""

from __future__ import annotations

from hvdistill.config import SourceConfig
from hvdistill.data.errors import DatasetLayoutError
from hvdistill.data.sources.base import DataSource


def build_source(cfg: SourceConfig, cameras: list[str] | None = None) -> DataSource:
    """The reader for `cfg.name` over `cfg.root`, restricted to `cfg.split` / `cfg.split_file`.

    `cameras` selects and orders the cameras (nuScenes: a subset of the six; SemanticKITTI:
    image_2 / image_3; Argoverse 2: of the seven ring cameras). Names a dataset does not have
    are dropped for SemanticKITTI and Argoverse 2 (none left = their default cameras), so the
    nuScenes camera list of `DataConfig.cameras` can be passed to every source; nuScenes drops
    the other datasets' camera names and rejects any other unknown name (a typo), so one list can
    choose cameras of all three (`data.cameras=[CAM_FRONT,ring_front_center]`). None = the
    dataset's default cameras.
    """
    if cfg.name == "nuscenes":
        from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
        from hvdistill.data.sources.nuscenes import NuScenesSource
        from hvdistill.data.sources.semantickitti import KITTI_CAMERAS

        foreign = set(KITTI_CAMERAS) | set(ARGOVERSE2_RING_CAMERAS)
        own = [c for c in cameras or [] if c not in foreign] or None
        return NuScenesSource(cfg.root, cfg.version, cfg.split, cfg.split_file, own)
    if cfg.name == "semantickitti":
        from hvdistill.data.sources.semantickitti import KITTI_CAMERAS, SemanticKITTISource

        kitti = [c for c in cameras or [] if c in KITTI_CAMERAS] or None
        return SemanticKITTISource(cfg.root, cfg.split, cfg.split_file, kitti)
    if cfg.name == "argoverse2":
        from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
        from hvdistill.data.sources.argoverse2 import Argoverse2Source

        ring = [c for c in cameras or [] if c in ARGOVERSE2_RING_CAMERAS] or None
        return Argoverse2Source(
            cfg.root, cfg.split, cfg.split_file, ring, cfg.camera_tolerance_ms, cfg.lidar_origin
        )
    raise DatasetLayoutError(f"unknown source '{cfg.name}'; use nuscenes, semantickitti or argoverse2")


__all__ = ["DataSource", "build_source"]
