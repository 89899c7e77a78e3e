"""The `model` section: LiDAR student, image teacher, depth net; their checks.

The checks here include the cross-section ones whose dependent key is a model key: the BEV head
stride and plane counts against the geometry's grids, the teacher's feature stride against
`geometry.feature_stride` (a ResNet's `model.image.output_stride`, a ViT's patch size) and the
crop against that stride (a ResNet's map covers the crop exactly; a ViT pads it), and
`model.lidar.sparse_dtype` against `dist.use_gpu`. They read config values only (no model
import), so a bad model config fails when the config loads, before any sharding or training;
`build_lidar_model` calls `lidar_problems` as its guard.

Teacher architectures: the torchvision-layout ResNets (`resnet18`, `resnet50`) and DINOv2-layout
ViTs named `vit_<size>_patch<p>[_reg<r>]` (hvdistill/models/image/vit.py holds their widths);
`teacher_stride` is the pixel step between the teacher's feature cells, read from the config
alone (hvdistill/geometry/frustum.py: `teacher_feature_grid` adds where cell 0 sits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from hvdistill.config.geometry import GeometryConfig, bev_stride, voxel_grid_shape

if TYPE_CHECKING:
    from hvdistill.config import Config

UNET_PLANES = 8  # MinkUNet34C layout: 4 encoder + 4 decoder stages
UNET_STAGES = 4

ImageArch = Literal[
    "resnet50",
    "resnet18",
    "vit_tiny_patch14",
    "vit_small_patch14",
    "vit_base_patch14",
    "vit_large_patch14",
    "vit_tiny_patch14_reg4",
    "vit_small_patch14_reg4",
    "vit_base_patch14_reg4",
    "vit_large_patch14_reg4",
]
IMAGE_ARCHS: tuple[str, ...] = get_args(ImageArch)
RESNET_WEIGHT_FORMATS = ("moco", "dino", "torchvision")
VIT_WEIGHT_FORMATS = ("dinov2", "timm")


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

    arch: ImageArch = "resnet50"  # a ResNet, or a DINOv2-layout ViT (docs/models.md, "ViT teachers")
    weights: str = ""  # local checkpoint path (.pth / .bin / .safetensors); required unless random_init
    # ResNets: moco, dino, torchvision; ViTs: dinov2 (the release's .pth), timm (model.safetensors / .bin)
    weights_format: Literal["auto", "moco", "dino", "torchvision", "dinov2", "timm"] = "auto"
    random_init: bool = False  # explicit opt-in for synthetic runs and tests
    random_init_seed: int = 0  # a random teacher is the same on every rank (it is never broadcast)
    allow_partial_weights: bool = False  # load a checkpoint matching the backbone only in part
    output_stride: int = 4  # ResNets only (dilation); a ViT's stride is its patch size
    # how the frozen ResNet runs (the features are the same within float32 rounding; see
    # hvdistill/models/image/inference.py): BatchNorm folded into its convolutions, NHWC layout;
    # a ViT has no BatchNorm and runs as it is
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


def vit_patch_size(arch: str) -> int | None:
    """The patch size of a ViT arch name (`vit_small_patch14` -> 14); None for a ResNet."""
    match = re.fullmatch(r"vit_[a-z]+_patch(\d+)(_reg\d+)?", arch)
    return int(match.group(1)) if match else None


def teacher_stride(arch: str, output_stride: int) -> int:
    """Pixels between neighbouring feature cells: a ViT's patch size, a ResNet's output stride."""
    return vit_patch_size(arch) or output_stride


def _stride_problems(cfg: Config) -> list[str]:
    """The teacher's cells are the depth lift's grid, and a ResNet's tile the crop exactly."""
    im, g = cfg.model.image, cfg.geometry
    patch = vit_patch_size(im.arch)
    p: list[str] = []
    if patch is None and im.output_stride != g.feature_stride:
        p.append(
            f"model.image.output_stride: {im.output_stride} must equal "
            f"geometry.feature_stride={g.feature_stride} (the depth lift works on that grid)"
        )
    if patch is not None and patch != g.feature_stride:
        p.append(
            f"geometry.feature_stride: {g.feature_stride} must equal the teacher's stride, {patch} "
            f"(model.image.arch={im.arch}: its patch size); set geometry.feature_stride={patch} "
            f"loss.depth_target_pool={patch}"
        )
    for key in ("crop_height", "crop_width"):
        size = getattr(g, key)
        if patch is None and g.feature_stride >= 1 and size % g.feature_stride:
            p.append(
                f"geometry.{key}: {size} is not a multiple of geometry.feature_stride={g.feature_stride} "
                f"(a ResNet teacher's feature map tiles the crop exactly)"
            )
        elif patch is not None and size < patch:
            p.append(f"geometry.{key}: {size} is smaller than one {patch} px patch of the {im.arch} teacher")
    return p


def _weights_format_problems(im: ImageModelConfig) -> list[str]:
    vit = vit_patch_size(im.arch) is not None
    allowed = VIT_WEIGHT_FORMATS if vit else RESNET_WEIGHT_FORMATS
    if im.weights_format == "auto" or im.weights_format in allowed:
        return []
    return [
        f"model.image.weights_format: {im.weights_format} is a format of "
        f"{'ResNet' if vit else 'ViT'} checkpoints, and model.image.arch={im.arch} is a "
        f"{'ViT' if vit else 'ResNet'}; use auto or one of {list(allowed)}"
    ]


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
    p += _stride_problems(cfg) + _weights_format_problems(im)
    if lm.sparse_dtype == "float16" and not cfg.dist.use_gpu:
        p.append("model.lidar.sparse_dtype: float16 needs a GPU; set it to float32 on CPU")
    return p
