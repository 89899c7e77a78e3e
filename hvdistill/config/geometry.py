"""The `geometry` and `augment` sections: grids, crops and depth bins, augmentations; their checks.

Also the two grid quantities other sections' checks need, computed from config values alone:
the voxel grid's shape and the BEV stride (voxels per BEV cell side). How the crop relates to
`feature_stride` depends on the teacher (a ResNet's map tiles the crop, a ViT pads it), so that
check sits with the model section (hvdistill/config/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hvdistill.config.loader import check_pair, check_range

if TYPE_CHECKING:
    from hvdistill.config import Config


@dataclass(slots=True, kw_only=True)
class GeometryConfig:
    """Grids and projection rules shared by data, model and loss."""

    point_range: list[float] = field(default_factory=lambda: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    voxel_size: float = 0.1
    bev_resolution: float = 0.4
    bev_size: int = 256  # cells per side: 256 x 0.4 m = 102.4 m
    crop_height: int = 224
    crop_width: int = 416
    feature_stride: int = 4  # image features at 1/4 resolution: 56 x 104 (a ViT teacher: its patch, 14)
    depth_min: float = 1.0
    depth_max: float = 60.0
    depth_step: float = 0.5  # 118 bins over [1, 60)

    @property
    def depth_bins(self) -> int:
        return int(round((self.depth_max - self.depth_min) / self.depth_step))


@dataclass(slots=True, kw_only=True)
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


def voxel_grid_shape(g: GeometryConfig) -> tuple[int, int, int]:
    """Voxels along x, y, z of the point-range crop (hvdistill.geometry.voxel.grid_shape's rule)."""
    return tuple(int(round((g.point_range[i + 3] - g.point_range[i]) / g.voxel_size)) for i in range(3))


def bev_stride(g: GeometryConfig) -> int:
    """Voxels per BEV cell side: bev_resolution / voxel_size (4 for 0.1 m voxels, 0.4 m cells)."""
    return int(round(g.bev_resolution / g.voxel_size))


def bev_grid_problems(g: GeometryConfig) -> list[str]:
    """The BEV grid is a whole-stride coarsening of the voxel grid and covers all of it."""
    if len(g.point_range) != 6 or g.voxel_size <= 0 or g.bev_resolution <= 0:
        return []  # reported by the basic checks
    stride = bev_stride(g)
    if stride < 1 or abs(stride * g.voxel_size - g.bev_resolution) > 1e-6 * stride:
        return [
            f"geometry.bev_resolution: {g.bev_resolution} must be a whole multiple of "
            f"geometry.voxel_size={g.voxel_size}"
        ]
    nx, ny, _ = voxel_grid_shape(g)
    need = max(-(-nx // stride), -(-ny // stride))
    if need > g.bev_size:
        return [
            f"geometry.bev_size: {g.bev_size} cells do not cover the {nx} x {ny} voxel grid at "
            f"stride {stride}; set geometry.bev_size={need}"
        ]
    return []


def geometry_problems(cfg: Config) -> list[str]:
    """Every inconsistency inside the `geometry` section, each with its fix."""
    p: list[str] = []
    g = cfg.geometry
    if len(g.point_range) != 6 or any(g.point_range[i] >= g.point_range[i + 3] for i in range(3)):
        p.append(
            f"geometry.point_range: expected [xmin, ymin, zmin, xmax, ymax, zmax] with "
            f"min < max, got {g.point_range}"
        )
    for key in ("voxel_size", "bev_resolution", "depth_step"):
        if getattr(g, key) <= 0:
            p.append(f"geometry.{key}: must be > 0; set geometry.{key}=<positive float>")
    if g.depth_max <= g.depth_min:
        p.append("geometry.depth_max: must exceed geometry.depth_min")
    if g.feature_stride < 1:
        p.append(f"geometry.feature_stride: {g.feature_stride} must be >= 1")
    bins = (g.depth_max - g.depth_min) / g.depth_step if g.depth_step > 0 else 0
    if g.depth_step > 0 and abs(bins - round(bins)) > 1e-6:
        p.append(
            f"geometry.depth_step: {g.depth_step} does not divide depth_max - depth_min = "
            f"{g.depth_max - g.depth_min}; choose a step that gives a whole number of bins"
        )
    return p + bev_grid_problems(g)


def augment_problems(cfg: Config) -> list[str]:
    """Every inconsistency inside the `augment` section, each with its fix."""
    p: list[str] = []
    a = cfg.augment
    if a.crop_max_tries < 1:
        p.append(f"augment.crop_max_tries: {a.crop_max_tries} must be >= 1")
    for key in ("flip_x_p", "flip_y_p", "hflip_p", "crop_min_kept_fraction"):
        check_range(p, f"augment.{key}", getattr(a, key), 0.0, 1.0)
    for key in ("scale_range", "crop_area", "crop_aspect"):
        check_pair(p, f"augment.{key}", getattr(a, key))
    if a.crop_area and not 0 < a.crop_area[0] <= a.crop_area[-1] <= 1:
        p.append(f"augment.crop_area: {a.crop_area} must lie in (0, 1]")
    if a.crop_aspect and a.crop_aspect[0] <= 0:
        p.append(f"augment.crop_aspect: {a.crop_aspect} must be positive")
    return p
