"""Where the teacher's feature cells sit, the LSS frustum, and the lift of image points to LiDAR.

`FeatureGrid(stride, centre)` is the one description of the teacher's feature cells: cell
(i, j) sits at pixel (u, v) = (stride j + centre, stride i + centre), pixel centres at integer
coordinates (docs/geometry.md). `teacher_feature_grid(arch, output_stride)` gives it from the
config alone, and the frustum (here), the depth targets (hvdistill/losses/depth.py) and the
teacher's IPV upsampling (hvdistill/models/image/teacher.py: `upsample_cells`) all read it; the
teacher derives the same pair from its own modules (`feature_grid`) and refuses a network that
disagrees. It is a property of the network, not a tunable:
- a torchvision ResNet: stride = output stride, centre 0 (`RESNET_CELL_CENTRE`). Its stem
  (conv 7x7 stride 2 padding 3, max-pool 3x3 stride 2 padding 1) and its later convs are all
  centred, so cell j looks at pixel s j at any output stride;
- a ViT: stride = patch size p, centre (p - 1) / 2 (6.5 for p = 14): token j embeds exactly
  the pixels [p j, p j + p - 1], whose middle is p j + (p - 1) / 2 (attention mixes every
  token, so this is where the token's own patch is, not the extent of what it sees).
`FeatureGrid.cells(length)` counts the cells along a crop axis: those whose centre lies on a
crop pixel (s j + c <= length - 1). For a ResNet with the crop a multiple of s that is length / s;
a ViT pads the crop right/bottom to whole patches and drops a last token whose centre falls in
the padding, so no cell of the grid is centred outside the crop.

`make_frustum` gives, for one augmented crop, the (u, v, depth) of every feature cell and
depth bin: u, v at the cell centres above, depth at bin centres of [depth_min, depth_max) in
`depth_step` steps (118 bins by default).

`lift_to_lidar` undoes the camera's image augmentation, back-projects with K at the given
depth (camera z), maps camera -> LiDAR, and applies the LiDAR augmentation, so lifted features
land where the LiDAR BEV features of the same augmented sample are. `frustum_cells` turns that
into BEV cell indices for the scatter-add pooling of the model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hvdistill.config.model import teacher_stride, vit_patch_size
from hvdistill.geometry.bev import BEVGrid

RESNET_CELL_CENTRE = 0.0  # pixel of a torchvision ResNet's cell 0 (receptive-field centre)


class FeatureGrid(NamedTuple):
    """Where the teacher's feature cells sit: cell j at pixel stride * j + centre (module docstring)."""

    stride: int  # pixels between neighbouring cells
    centre: float  # pixel of cell 0's centre

    def cells(self, length: int) -> int:
        """Cells along a crop axis of `length` pixels: those centred on a crop pixel (<= length - 1)."""
        return max(math.floor((length - 1 - self.centre) / self.stride) + 1, 0)

    def centres(self, length: int) -> torch.Tensor:
        """(cells(length),) float64 pixel coordinates of the cell centres along that axis."""
        return torch.arange(self.cells(length), dtype=torch.float64) * self.stride + self.centre


def teacher_feature_grid(arch: str, output_stride: int) -> FeatureGrid:
    """The grid of `model.image.arch` / `output_stride` from the config alone (no network built)."""
    patch = vit_patch_size(arch)
    if patch is not None:
        return FeatureGrid(patch, (patch - 1) / 2)
    return FeatureGrid(teacher_stride(arch, output_stride), RESNET_CELL_CENTRE)


def depth_bin_centres(depth_min: float, depth_max: float, depth_step: float) -> torch.Tensor:
    """(D,) float64 centres of the depth bins [d0, d0 + step), ... covering [min, max)."""
    n = int(round((depth_max - depth_min) / depth_step))
    return depth_min + (torch.arange(n, dtype=torch.float64) + 0.5) * depth_step


def depth_to_bin(depth: torch.Tensor, depth_min: float, depth_max: float, depth_step: float) -> torch.Tensor:
    """Bin index of each depth, -1 outside [depth_min, depth_max)."""
    n = int(round((depth_max - depth_min) / depth_step))
    b = torch.floor((depth - depth_min) / depth_step).long()
    return torch.where((b >= 0) & (b < n), b, torch.full_like(b, -1))


def make_frustum(
    crop_height: int,
    crop_width: int,
    stride: int,
    depth_min: float,
    depth_max: float,
    depth_step: float,
    centre: float = RESNET_CELL_CENTRE,
) -> torch.Tensor:
    """(D, Hf, Wf, 3) float64 (u, v, depth) in augmented-crop pixels; cell j at u = stride * j + centre.

    Hf, Wf = `FeatureGrid(stride, centre).cells` of the crop height and width.
    """
    grid = FeatureGrid(stride, centre)
    u = grid.centres(crop_width)  # (Wf,)
    v = grid.centres(crop_height)  # (Hf,)
    d = depth_bin_centres(depth_min, depth_max, depth_step)  # (D,)
    dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")
    return torch.stack([uu, vv, dd], dim=-1)


def lift_to_lidar(
    uvd: torch.Tensor,
    intrinsics: torch.Tensor,
    camera_to_lidar: torch.Tensor,
    image_aug: torch.Tensor,
    lidar_aug: torch.Tensor,
) -> torch.Tensor:
    """Lift (N, ..., 3) augmented-pixel (u, v, depth) of N images to augmented LiDAR xyz.

    intrinsics (N, 3, 3), camera_to_lidar (N, 4, 4), image_aug (N, 3, 3) and lidar_aug
    (N, 4, 4) are per image (repeat a sample's LiDAR augmentation for each of its cameras).
    Computed in float64; returns (N, ..., 3) float64.
    """
    n = uvd.shape[0]
    pts = uvd.reshape(n, -1, 3).double()  # (N, P, 3)
    ones = torch.ones_like(pts[..., :1])
    pix_aug = torch.cat([pts[..., :2], ones], dim=-1)  # (N, P, 3)
    undo = torch.linalg.inv(intrinsics.double()) @ torch.linalg.inv(image_aug.double())  # (N, 3, 3)
    rays = pix_aug @ undo.transpose(1, 2)  # (N, P, 3) camera rays with z = 1
    cam = rays * pts[..., 2:3]  # (N, P, 3) camera frame at the given depth
    to_lidar = lidar_aug.double() @ camera_to_lidar.double()  # (N, 4, 4)
    out = cam @ to_lidar[:, :3, :3].transpose(1, 2) + to_lidar[:, None, :3, 3]
    return out.reshape(uvd.shape)


def frustum_cells(
    frustum: torch.Tensor,
    grid: BEVGrid,
    intrinsics: torch.Tensor,
    camera_to_lidar: torch.Tensor,
    image_aug: torch.Tensor,
    lidar_aug: torch.Tensor,
    z_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(N, D, Hf, Wf) int64 flat BEV cell of every frustum point of N images, -1 if outside.

    `z_range` (zmin, zmax) also drops points outside the vertical crop (single z bin).
    """
    n = intrinsics.shape[0]
    uvd = frustum.unsqueeze(0).expand(n, *frustum.shape)
    xyz = lift_to_lidar(uvd, intrinsics, camera_to_lidar, image_aug, lidar_aug)  # (N, D, Hf, Wf, 3)
    cells = grid.flat_index(xyz[..., :2])
    if z_range is not None:
        bad = (xyz[..., 2] < z_range[0]) | (xyz[..., 2] >= z_range[1])
        cells = torch.where(bad, torch.full_like(cells, -1), cells)
    return cells
