"""The LSS frustum and the lift of image points back into the (augmented) LiDAR frame.

`make_frustum` gives, for one augmented crop, the (u, v, depth) of every feature cell and
depth bin: u, v at the receptive-field centre of the cell, depth at bin centres of
[depth_min, depth_max) in `depth_step` steps (118 bins by default).

Feature-cell centres: cell (i, j) of a feature map at stride s sits at pixel
(u, v) = (s j + c, s i + c), pixel centres at integer coordinates (docs/geometry.md). `c` is the
receptive-field centre of cell 0, `FEATURE_CELL_CENTRE` = 0: a torchvision ResNet's stem
(conv 7x7 stride 2 padding 3, max-pool 3x3 stride 2 padding 1) and its later convs are all
centred, so cell j looks at pixel s j at any output stride. It is a property of the network,
not a tunable: `hvdistill/models/image/teacher.py: feature_grid` derives it from the teacher's
modules and the teacher refuses a backbone that disagrees; the frustum, the depth targets
(hvdistill/losses/depth.py) and the teacher's IPV upsampling all place cell j at s j + c.

`lift_to_lidar` undoes the camera's image augmentation, back-projects with K at the given
depth (camera z), maps camera -> LiDAR, and applies the LiDAR augmentation, so lifted features
land where the LiDAR BEV features of the same augmented sample are. `frustum_cells` turns that
into BEV cell indices for the scatter-add pooling of the model.
"""

from __future__ import annotations

import torch

from hvdistill.geometry.bev import BEVGrid

FEATURE_CELL_CENTRE = 0.0  # pixel of feature cell 0's receptive-field centre; cell j at stride * j + this


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
    centre: float = FEATURE_CELL_CENTRE,
) -> torch.Tensor:
    """(D, Hf, Wf, 3) float64 (u, v, depth) in augmented-crop pixels; cell j at u = stride * j + centre."""
    hf, wf = crop_height // stride, crop_width // stride
    u = torch.arange(wf, dtype=torch.float64) * stride + centre  # (Wf,)
    v = torch.arange(hf, dtype=torch.float64) * stride + centre  # (Hf,)
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
