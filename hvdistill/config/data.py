"""The `data` section: raw sources, sharding and streaming settings, and their checks.

Other sections' checks that read `data` keys live with the section that owns the dependent key
(see hvdistill/config/__init__.py); the ones here read only `data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hvdistill.config.loader import check_range
from hvdistill.storage import location_problem

if TYPE_CHECKING:
    from hvdistill.config import Config

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
# Argoverse 2's seven ring cameras, in the devkit's `RingCameras` order (left rear round to right rear)
ARGOVERSE2_RING_CAMERAS = (
    "ring_rear_left",
    "ring_side_left",
    "ring_front_left",
    "ring_front_center",
    "ring_front_right",
    "ring_side_right",
    "ring_rear_right",
)
ARGOVERSE2_CAMERA_TOLERANCE_MS = 25.0  # the devkit's: half the 20 Hz ring cameras' period


@dataclass(slots=True, kw_only=True)
class SourceConfig:
    """One raw dataset and its weight in the training mix."""

    name: Literal["nuscenes", "semantickitti", "argoverse2"] = "nuscenes"
    root: str = "data/synthetic-nuscenes"
    version: str = "v1.0-mini"  # nuScenes table folder; ignored for SemanticKITTI and Argoverse 2
    split: Literal["train", "val"] = "train"
    # optional file listing scene names (nuScenes), sequences (KITTI) or log ids (Argoverse 2)
    split_file: str = ""
    weight: float = 1.0  # sampling weight when several datasets are mixed
    # Argoverse 2: a ring camera's nearest image farther than this from the sweep is a missing
    # camera frame (the sample is quarantined); the devkit's own limit. Ignored by the others.
    camera_tolerance_ms: float = ARGOVERSE2_CAMERA_TOLERANCE_MS
    # Argoverse 2: where the LiDAR frame of its points has its origin. sensor = the up_lidar's
    # mounting point (ego axes), so the ground lies ~1.6-1.9 m below the origin as in nuScenes'
    # and KITTI's LiDAR frames and one voxel crop fits all three rigs; ego = AV2's ego frame as
    # stored (origin on the ground at the rear axle). Ignored by the others.
    lidar_origin: Literal["sensor", "ego"] = "sensor"


@dataclass(slots=True, kw_only=True)
class SuperpixelConfig:
    """SLIC superpixels, computed once at sharding time (scikit-image).

    The published recipe runs SLIC on the full-resolution camera image (nuScenes 1600x900).
    Here it runs on the stored image reduced by `scale` (400x225 by default, ~1/4 of the CPU of
    SLIC on the stored 800x450 image at equal or better boundary recall and under-segmentation
    error on the synthetic world: docs/benchmarks.md "Superpixels"); the ids are stored at the
    stored image's size. The SLIC of the stored image at sigma 3 stored pixels (before this
    change): scale=1.0, sigma=6.0 on nuScenes (6 source px = 3 px at 800x450).
    """

    n_segments: int = 150
    compactness: float = 6.0
    sigma: float = 3.0  # Gaussian pre-smoothing in pixels of the source image (published: 3 at 1600x900)
    start_label: int = 0
    scale: float = 0.5  # SLIC runs on the stored image resized by this (0 < scale <= 1; ids upsampled)
    max_num_iter: int = 10  # SLIC k-means iterations (scikit-image's default)


@dataclass(slots=True, kw_only=True)
class DataConfig:
    """Where training data comes from and how it is streamed."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    # shard dirs / manifest.json paths / bare .tar files, local or on an object store
    # (s3://bucket/prefix, gs://...; credentials from the environment, see docs/cluster.md)
    shards: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    stored_image_width: int = 800  # images stored in shards at this width (crops need ~800x450)
    stored_image_height: int = 450
    # the largest raw camera image decoded (width x height, checked from its header before decoding;
    # a larger one is a bad sample, skipped); 0 = RAW_IMAGE_SCALE^2 x the stored size (3200 x 1800
    # for 800 x 450: nuScenes' 1600 x 900 and KITTI's 1241 x 376 fit)
    max_image_pixels: int = 0
    jpeg_quality: int = 90
    min_depth: float = 1.0  # pairs keep depth > min_depth (nuscenes-devkit's rule)
    image_border: float = 1.0  # pairs keep border < u < W - border, border < v < H - border
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    shard_size_mb: float = 256.0
    shard_task_samples: int = 256  # samples per Ray sharding task; longer chunks are split
    max_bad_fraction: float = 0.01  # sharding fails past this fraction of bad samples
    shard_shuffle: bool = True  # units (hence shards) draw samples from the whole split, not a scene
    shard_shuffle_seed: int = 0  # seed of that deterministic, hash-based order of the keys
    shard_splits: list[str] = field(default_factory=lambda: ["train"])  # splits the reader streams
    max_consecutive_bad: int = 100  # the reader stops after this many bad shards/samples in a row
    datasets: list[str] = field(default_factory=list)  # reader: stream only these datasets; [] = all
    shuffle_buffer: int = 256
    resampled: bool = True  # sample shards with replacement, fixed epoch length per rank
    epoch_samples: int = 0  # samples per epoch per rank in resampled mode; 0 = dataset size
    loader_workers: int = 2
    prefetch_factor: int = 2
    # shards of an object store: how many the reader fetches ahead of the one it reads, per stream
    # (each whole, in memory); 0 = fetch each when it is needed
    read_ahead: int = 2


RAW_IMAGE_SCALE = 4  # a raw camera image may be this many times the stored size, per side


def image_pixel_limit(d: DataConfig) -> int:
    """Pixels of the largest raw camera image a reader decodes (`data.max_image_pixels`, or derived)."""
    if d.max_image_pixels > 0:
        return d.max_image_pixels
    return RAW_IMAGE_SCALE**2 * max(d.stored_image_width, 1) * max(d.stored_image_height, 1)


def data_problems(cfg: Config) -> list[str]:
    """Every inconsistency inside the `data` section, each with its fix."""
    p: list[str] = []
    d = cfg.data
    if not 1 <= d.superpixels.n_segments <= 30000:
        p.append(
            f"data.superpixels.n_segments: {d.superpixels.n_segments} must be in 1..30000 "
            f"(ids are stored as int16)"
        )
    sp = d.superpixels
    if not 0 < sp.scale <= 1:
        p.append(f"data.superpixels.scale: {sp.scale} must be in (0, 1] (SLIC never runs above stored size)")
    if sp.max_num_iter < 1:
        p.append(f"data.superpixels.max_num_iter: {sp.max_num_iter} must be >= 1")
    if sp.sigma < 0:
        p.append(f"data.superpixels.sigma: {sp.sigma} must be >= 0 (0 = no smoothing)")
    if d.stored_image_width <= 0 or d.stored_image_height <= 0:
        p.append("data.stored_image_width / data.stored_image_height: must be > 0")
    if d.max_image_pixels < 0:
        p.append(f"data.max_image_pixels: {d.max_image_pixels} must be >= 0 (0 = 16 x the stored size)")
    if not 1 <= d.jpeg_quality <= 100:
        p.append(f"data.jpeg_quality: {d.jpeg_quality} must be in 1..100")
    check_range(p, "data.max_bad_fraction", d.max_bad_fraction, 0.0, 1.0)
    if d.shard_size_mb <= 0 or d.shard_task_samples <= 0:
        p.append("data.shard_size_mb / data.shard_task_samples: must be > 0")
    if not d.sources and not d.shards:
        p.append("data: neither data.sources nor data.shards is set; give at least one")
    pairs = [(s.name, s.split) for s in d.sources]
    if len(set(pairs)) != len(pairs):
        p.append(
            f"data.sources: {pairs} lists a (name, split) twice; shards and the manifest know a "
            f"source by its name and split, so give each once"
        )
    if any(s.weight <= 0 for s in d.sources):
        p.append("data.sources[*].weight: weights must be > 0")
    for i, s in enumerate(d.sources):
        if not s.camera_tolerance_ms > 0:
            p.append(
                f"data.sources.{i}.camera_tolerance_ms: {s.camera_tolerance_ms} must be > 0 "
                f"(Argoverse 2 devkit: {ARGOVERSE2_CAMERA_TOLERANCE_MS})"
            )
    if not d.shard_splits or any(s not in ("train", "val") for s in d.shard_splits):
        p.append(f"data.shard_splits: {d.shard_splits} must list 'train' and/or 'val'")
    if d.max_consecutive_bad < 1:
        p.append(f"data.max_consecutive_bad: {d.max_consecutive_bad} must be >= 1")
    if d.read_ahead < 0:
        p.append(f"data.read_ahead: {d.read_ahead} must be >= 0 (0 = fetch each shard when needed)")
    p += [problem for i, s in enumerate(d.shards) if (problem := location_problem(s, f"data.shards[{i}]"))]
    if len(set(d.datasets)) != len(d.datasets) or not all(d.datasets):
        p.append(f"data.datasets: {d.datasets} must name each dataset once (empty list = all)")
    return p
