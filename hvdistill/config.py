"""The one typed configuration of hvdistill: schema, YAML diffs, dotted overrides, validation.

Every tunable number of the system lives here, with the published HVDistill recipe as the
defaults (see docs/method.md). A YAML file in configs/ is a small diff over these defaults;
`key.sub=value` overrides are applied on top. Problems are collected and raised together in
one `ConfigError` that names each key and says how to fix it. `flatten()` gives the flat
`{"a.b": value}` dict used for MLflow params and Ray Tune search spaces.

The machinery (YAML reading, overrides, type checks, nearest-name suggestions) lives in
`hvdistill/config_loader.py`; the cross-field checks in `hvdistill/config_checks.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from hvdistill.config_checks import semantic_problems
from hvdistill.config_loader import ConfigError, apply_overrides, flatten_dataclass, load_yaml_diff

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class SourceConfig:
    """One raw dataset and its weight in the training mix."""

    name: Literal["nuscenes", "semantickitti"] = "nuscenes"
    root: str = "data/synthetic-nuscenes"
    version: str = "v1.0-mini"  # nuScenes table folder; ignored for SemanticKITTI
    split: Literal["train", "val"] = "train"
    split_file: str = ""  # optional file listing scene names (nuScenes) or sequences (KITTI)
    weight: float = 1.0  # sampling weight when several datasets are mixed


@dataclass
class SuperpixelConfig:
    """SLIC superpixels, computed once at sharding time (scikit-image)."""

    n_segments: int = 150
    compactness: float = 6.0
    sigma: float = 3.0
    start_label: int = 0


@dataclass
class DataConfig:
    """Where training data comes from and how it is streamed."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    shards: list[str] = field(default_factory=list)  # shard dirs / manifest.json paths
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    stored_image_width: int = 800  # images stored in shards at this width (crops need ~800x450)
    stored_image_height: int = 450
    jpeg_quality: int = 90
    min_depth: float = 1.0  # pairs keep depth > min_depth (nuscenes-devkit's rule)
    image_border: float = 1.0  # pairs keep border < u < W - border, border < v < H - border
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    shard_size_mb: float = 256.0
    shard_task_samples: int = 256  # samples per Ray sharding task; longer chunks are split
    max_bad_fraction: float = 0.01  # sharding fails past this fraction of bad samples
    shard_splits: list[str] = field(default_factory=lambda: ["train"])  # splits the reader streams
    max_consecutive_bad: int = 100  # the reader stops after this many bad shards/samples in a row
    shuffle_buffer: int = 256
    resampled: bool = True  # sample shards with replacement, fixed epoch length per rank
    epoch_samples: int = 0  # samples per epoch per rank in resampled mode; 0 = dataset size
    loader_workers: int = 2
    prefetch_factor: int = 2


@dataclass
class SynthConfig:
    """The procedural LiDAR+camera world used for demos, tests and benchmarks."""

    scenes: int = 2
    frames_per_scene: int = 4
    seed: int = 0
    image_width: int = 800
    image_height: int = 450
    lidar_beams: int = 32
    lidar_points_per_beam: int = 1084  # ~32 x 1084 = 34.7k rays, ~30k returns
    lidar_fov_up_deg: float = 10.0
    lidar_fov_down_deg: float = -30.0
    lidar_max_range: float = 70.0
    lidar_range_noise: float = 0.02
    lidar_dropout: float = 0.05
    frame_interval_s: float = 0.5  # keyframes at 2 Hz like nuScenes
    camera_delay_s: float = 0.02  # cameras fire after the LiDAR; the ego moves in between
    ego_speed_mps: float = 8.0
    render_threads: int = 2  # cameras rendered in parallel threads (output independent of it)
    camera_stagger_s: float = 0.005  # each camera fires this much after the previous one
    object_density: float = 1.0  # scales how densely objects are placed along the road
    lidar_intensity_noise: float = 0.05  # relative noise of the LiDAR intensity
    image_noise_std: float = 3.0  # Gaussian pixel noise of the rendered images (0-255 scale)
    jpeg_quality: int = 90  # quality of the written camera JPEGs (nuScenes layout)


# --------------------------------------------------------------------------------------------
# Geometry and augmentation


@dataclass
class GeometryConfig:
    """Grids and projection rules shared by data, model and loss."""

    point_range: list[float] = field(default_factory=lambda: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    voxel_size: float = 0.1
    bev_resolution: float = 0.4
    bev_size: int = 256  # cells per side: 256 x 0.4 m = 102.4 m
    crop_height: int = 224
    crop_width: int = 416
    feature_stride: int = 4  # image features at 1/4 resolution: 56 x 104
    depth_min: float = 1.0
    depth_max: float = 60.0
    depth_step: float = 0.5  # 118 bins over [1, 60)

    @property
    def depth_bins(self) -> int:
        return int(round((self.depth_max - self.depth_min) / self.depth_step))


@dataclass
class AugmentConfig:
    """Point-cloud and joint augmentations; every one keeps correspondences consistent."""

    enabled: bool = True
    yaw_deg: float = 22.5
    translate_std: float = 0.5
    scale_range: list[float] = field(default_factory=lambda: [0.9, 1.1])
    flip_x_p: float = 0.5
    flip_y_p: float = 0.5
    drop_cuboids: bool = True
    drop_cuboid_max_fraction: float = 0.2  # cuboid side up to this fraction of the cloud extent
    min_pairs_per_camera: int = 1024
    crop_area: list[float] = field(default_factory=lambda: [0.3, 1.0])
    crop_aspect: list[float] = field(default_factory=lambda: [14.0 / 9.0, 17.0 / 9.0])
    crop_min_kept_fraction: float = 0.75
    crop_max_tries: int = 10
    hflip_p: float = 0.5


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class LidarModelConfig:
    """The spconv sparse residual UNet (MinkUNet34C layout) and its heads."""

    in_channels: int = 1  # intensity
    stem_channels: int = 32
    planes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256, 128, 96, 96])
    encoder_blocks: list[int] = field(default_factory=lambda: [2, 3, 4, 6])
    decoder_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    bev_head: Literal["strided", "column"] = "strided"
    bev_head_stride: int = 4  # strided sparse convs: 0.1 m voxels -> 0.4 m BEV cells
    bev_pool: Literal["max", "mean"] = "max"  # z-collapse of each (batch, x, y) BEV column
    sparse_dtype: Literal["float32", "float16"] = "float32"  # spconv has no bf16


@dataclass
class ImageModelConfig:
    """The frozen 2D teacher and its trainable 64-d head."""

    arch: Literal["resnet50", "resnet18"] = "resnet50"
    weights: str = ""  # local checkpoint path; required unless random_init
    weights_format: Literal["auto", "moco", "dino", "torchvision"] = "auto"
    random_init: bool = False  # explicit opt-in for synthetic runs and tests
    output_stride: int = 4
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DepthModelConfig:
    """Bridge, camera-aware depth net and lift (BEVDepth/LSS style)."""

    bridge_channels: int = 2048
    mid_channels: int = 256
    context_channels: int = 64
    camera_param_dim: int = 27
    residual_blocks: int = 3
    aspp: bool = True
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 6, 12, 18])
    aspp_dropout: float = 0.5


@dataclass
class ModelConfig:
    feature_dim: int = 64
    lidar: LidarModelConfig = field(default_factory=LidarModelConfig)
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    depth: DepthModelConfig = field(default_factory=DepthModelConfig)


# --------------------------------------------------------------------------------------------
# Loss, optimisation, training


@dataclass
class LossConfig:
    temperature: float = 0.07
    weight_ipv: float = 1.0
    weight_depth: float = 60.0
    weight_bev: float = 0.25
    gather_across_ranks: bool = True  # the loss owns the gather; identical with one process
    queue_size: int = 0  # momentum queue of past keys; 0 = off
    tile_size: int = 4096  # keys per tile in the tiled InfoNCE; 0 = untiled
    depth_target_pool: int = 4  # min non-zero depth in each 4x4 patch
    bev_start_epoch: int = 0  # two-stage schedule: BEV loss joins at this epoch
    max_bev_anchors: int = 0  # subsample BEV anchors per sample; 0 = all
    depth_reduction: Literal["cells_x_bins", "cells"] = "cells_x_bins"  # see docs/models.md
    renormalize_pooled: bool = True  # L2-normalise superpoint/superpixel means (SLidR: false)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    reference_batch: int = 16  # lr is scaled by global_batch / reference_batch
    scale_lr: bool = True
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off


@dataclass
class PrecisionConfig:
    image_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # sparse side: float32 on CPU; float16 is a GPU-only option (see LidarModelConfig)
    logits_dtype: Literal["float32"] = "float32"


@dataclass
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    zero_stage: int = 0
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    sync_batchnorm: bool = True


@dataclass
class TrainConfig:
    epochs: int = 50
    global_batch: int = 16
    micro_batch: int = 4  # per rank
    seed: int = 0
    steps_per_epoch: int = 0  # 0 = derived from the dataset
    log_every: int = 10
    checkpoint_every: int = 1000
    output_dir: str = "runs"
    max_nonfinite_steps: int = 0


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # empty = sqlite:///mlruns.db in the output dir
    experiment: str = "hvdistill"
    run_name: str = ""


@dataclass
class FinetuneConfig:
    dataset: Literal["nuscenes", "semantickitti"] = "nuscenes"
    num_classes: int = 17  # 16 classes + ignore 0 (nuScenes); 20 for SemanticKITTI
    ignore_index: int = 0
    epochs: int = 100
    lr_trunk: float = 0.02
    lr_head: float = 2.0
    batch_size: int = 16
    lovasz: bool = True
    linear_probe: bool = False
    label_fraction: float = 1.0
    checkpoint: str = ""


@dataclass
class SweepConfig:
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoints: list[str] = field(default_factory=list)
    max_concurrent: int = 1


@dataclass
class Config:
    """The whole system. Built by `load_config`, validated once."""

    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def validate(cfg: Config) -> Config:
    """Raise one ConfigError listing every semantic problem; return cfg when clean."""
    problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML diff at `path` <- `key.sub=value` overrides, then validate once."""
    cfg = Config()
    problems: list[str] = []
    if path:
        problems += load_yaml_diff(cfg, path)
    problems += apply_overrides(cfg, overrides or [])
    if problems:
        raise ConfigError(problems)
    return validate(cfg)


def flatten(cfg: Any) -> dict[str, Any]:
    """`{"optim.lr": 0.5, ...}` for MLflow params and Ray Tune spaces."""
    return flatten_dataclass(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)
