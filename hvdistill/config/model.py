"""The `model` section: LiDAR student, image teacher, depth net; their checks.

The checks here include the cross-section ones whose dependent key is a model key: the BEV head
stride and plane counts against the geometry's grids, the teacher's output stride against
`geometry.feature_stride`, and `model.lidar.sparse_dtype` against `dist.use_gpu`. They read
config values only (no model import), so a bad model config fails when the config loads,
before any sharding or training; `build_lidar_model` calls `lidar_problems` as its guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hvdistill.config.geometry import GeometryConfig, bev_stride, voxel_grid_shape

if TYPE_CHECKING:
    from hvdistill.config import Config

UNET_PLANES = 8  # MinkUNet34C layout: 4 encoder + 4 decoder stages
UNET_STAGES = 4


@dataclass(slots=True, kw_only=True)
class LidarModelConfig:
    """The spconv sparse residual UNet (MinkUNet34C layout) and its heads."""

    in_channels: int = 1  # intensity
    stem_channels: int = 32
    # 3x3x3 conv + BN + ReLU units in the stem: MinkUNet34C's conv0p1s1 = 1; 2 = the earlier two-conv stem
    stem_convs: int = 1
    # BatchNorm momentum (torch's meaning, as MinkowskiEngine's): SLidR's bn_momentum 0.05 for the stem,
    # strided, transposed and residual-projection norms (and the BEV head's); its residual blocks keep
    # torch's 0.1 (res16unet's _make_layer never passes bn_momentum to the blocks)
    bn_momentum: float = 0.05
    block_bn_momentum: float = 0.1
    planes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256, 128, 96, 96])
    encoder_blocks: list[int] = field(default_factory=lambda: [2, 3, 4, 6])
    decoder_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    bev_head: Literal["strided", "column"] = "strided"
    bev_head_stride: int = 4  # strided sparse convs: 0.1 m voxels -> 0.4 m BEV cells
    bev_pool: Literal["max", "mean"] = "max"  # z-collapse of each (batch, x, y) BEV column
    sparse_dtype: Literal["float32", "float16"] = "float32"  # spconv has no bf16


@dataclass(slots=True, kw_only=True)
class ImageModelConfig:
    """The frozen 2D teacher and its trainable 64-d head."""

    arch: Literal["resnet50", "resnet18"] = "resnet50"
    weights: str = ""  # local checkpoint path; required unless random_init
    weights_format: Literal["auto", "moco", "dino", "torchvision"] = "auto"
    random_init: bool = False  # explicit opt-in for synthetic runs and tests
    random_init_seed: int = 0  # a random teacher is the same on every rank (it is never broadcast)
    allow_partial_weights: bool = False  # load a checkpoint matching the backbone only in part
    output_stride: int = 4
    # how the frozen backbone runs (the features are the same within float32 rounding; see
    # hvdistill/models/image/inference.py): BatchNorm folded into its convolutions, NHWC layout
    fold_batchnorm: bool = True
    channels_last: bool = True
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass(slots=True, kw_only=True)
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


@dataclass(slots=True, kw_only=True)
class ModelConfig:
    feature_dim: int = 64
    lidar: LidarModelConfig = field(default_factory=LidarModelConfig)
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    depth: DepthModelConfig = field(default_factory=DepthModelConfig)


def _bev_head_problems(lm: LidarModelConfig, g: GeometryConfig) -> list[str]:
    """The BEV head's stride is the grid's, and a strided head fits the voxel grid."""
    if len(g.point_range) != 6 or g.voxel_size <= 0 or g.bev_resolution <= 0:
        return []  # the geometry checks report these
    stride = bev_stride(g)
    if stride < 1 or abs(stride * g.voxel_size - g.bev_resolution) > 1e-6 * stride:
        return []  # geometry.bev_resolution is reported by the geometry checks
    p: list[str] = []
    if stride != lm.bev_head_stride:
        p.append(
            f"model.lidar.bev_head_stride: {lm.bev_head_stride} disagrees with "
            f"geometry.bev_resolution / geometry.voxel_size = {stride}; "
            f"set model.lidar.bev_head_stride={stride}"
        )
    nx, ny, _ = voxel_grid_shape(g)
    if lm.bev_head == "strided" and (nx % stride or ny % stride):
        p.append(
            f"model.lidar.bev_head: 'strided' drops the last voxel rows of a {nx} x {ny} grid "
            f"not divisible by {stride}; adjust geometry.point_range or use model.lidar.bev_head=column"
        )
    if lm.bev_head == "strided" and stride & (stride - 1):
        p.append(
            f"model.lidar.bev_head: 'strided' needs a power-of-two stride, got {stride}; "
            f"use model.lidar.bev_head=column"
        )
    return p


def lidar_problems(lm: LidarModelConfig, g: GeometryConfig) -> list[str]:
    """Every inconsistency of the LiDAR model config with itself and the grids, with its fix."""
    p = _bev_head_problems(lm, g)
    counts = (len(lm.planes), len(lm.encoder_blocks), len(lm.decoder_blocks))
    if counts != (UNET_PLANES, UNET_STAGES, UNET_STAGES):
        p.append(
            f"model.lidar: planes needs {UNET_PLANES} entries, encoder_blocks and decoder_blocks "
            f"{UNET_STAGES} each"
        )
    if any(n < 1 for n in [lm.in_channels, lm.stem_channels, *lm.planes]):
        p.append("model.lidar.planes / stem_channels / in_channels: every width must be >= 1")
    if lm.stem_convs < 1:
        p.append(f"model.lidar.stem_convs: {lm.stem_convs} must be >= 1 (MinkUNet34C: 1)")
    for key in ("bn_momentum", "block_bn_momentum"):
        if not 0.0 < getattr(lm, key) <= 1.0:
            p.append(f"model.lidar.{key}: {getattr(lm, key)} must be in (0, 1] (torch's BatchNorm momentum)")
    return p


def model_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `model` section, including those against geometry and dist."""
    lm, im = cfg.model.lidar, cfg.model.image
    p = lidar_problems(lm, cfg.geometry)
    if not im.weights and not im.random_init:
        p.append(
            "model.image.weights: no teacher checkpoint given; set model.image.weights="
            "/path/to/moco_v2.pth, or model.image.random_init=true for synthetic runs"
        )
    if im.weights and im.random_init:
        p.append("model.image: both weights and random_init are set; choose one")
    if im.output_stride != cfg.geometry.feature_stride:
        p.append(
            f"model.image.output_stride: {im.output_stride} must equal "
            f"geometry.feature_stride={cfg.geometry.feature_stride} (the depth lift works on that grid)"
        )
    if lm.sparse_dtype == "float16" and not cfg.dist.use_gpu:
        p.append("model.lidar.sparse_dtype: float16 needs a GPU; set it to float32 on CPU")
    return p
