"""The lift: teacher head features -> depth distribution x context -> pooled image BEV features.

`BEVLift.forward` takes the teacher head's map (N, feature_dim, Hf, Wf) of N images (all
cameras of all samples; `image_batch` names each image's sample) on the teacher's feature grid
(1/4 resolution for the paper's ResNet, 14 px cells for a ViT/14: `teacher_feature_grid` of
`model.image`, hvdistill/geometry/frustum.py, whose cell centres the frustum's rays go
through), and per image
the intrinsics of the stored image,
camera -> (un-augmented) LiDAR transform, image-augmentation matrix (stored px -> crop px),
LiDAR augmentation (repeated for each camera of a sample) and sample index. It returns
`LiftOutput`: the depth logits (N, D, Hf, Wf) float32 for the depth loss, and the image BEV
features as a (B * S * S, C) table (row b * S * S + iy * S + ix, the sum over all cameras of
sample b, L2-normalised per cell; empty cells are zero) with its occupancy mask. `grid()`
views the table as (B, C, S, S). Frustum cells are recomputed every step, since
augmentation changes the geometry; points outside the grid or outside the point-range z
slab [z_min, z_max) are dropped (the BEV grid has a single z bin). No loss is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.config import GeometryConfig, ModelConfig, PrecisionConfig
from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.frustum import make_frustum, teacher_feature_grid
from hvdistill.models.depth.bev_pool import bev_pool, prepare_pool_index, ray_cells
from hvdistill.models.depth.depth_net import Bridge, DepthNet, camera_parameters
from hvdistill.models.image.teacher import autocast_context
from hvdistill.precision import resolve_image_dtype


@dataclass
class LiftOutput:
    depth_logits: torch.Tensor  # (N, D, Hf, Wf) float32
    bev: torch.Tensor | None  # (B * S * S, C) float32, L2-normalised per occupied cell; None if skipped
    occupied: torch.Tensor | None  # (B * S * S,) bool, cells reached by at least one frustum point
    batch_size: int
    grid_size: int

    def grid(self) -> torch.Tensor:
        """(B, C, S, S) view of the table (y rows, x columns)."""
        s = self.grid_size
        return self.bev.view(self.batch_size, s, s, -1).permute(0, 3, 1, 2)

    def occupancy_grid(self) -> torch.Tensor:
        """(B, S, S) bool."""
        s = self.grid_size
        return self.occupied.view(self.batch_size, s, s)


class BEVLift(nn.Module):
    """Bridge + DepthNet + frustum cells + sparse BEV pooling (see the module docstring)."""

    def __init__(
        self, model_cfg: ModelConfig, geometry_cfg: GeometryConfig, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        dcfg, g = model_cfg.depth, geometry_cfg
        self.bridge = Bridge(model_cfg.feature_dim, dcfg.bridge_channels)
        self.depth_net = DepthNet(dcfg.bridge_channels, g.depth_bins, dcfg)
        self.grid_spec = BEVGrid.from_config(g)
        cells = teacher_feature_grid(model_cfg.image.arch, model_cfg.image.output_stride)
        if cells.stride != g.feature_stride:
            raise ValueError(
                f"geometry.feature_stride={g.feature_stride} but the {model_cfg.image.arch} teacher's cells "
                f"are {cells.stride} px apart; set geometry.feature_stride={cells.stride}"
            )
        frustum = make_frustum(
            g.crop_height, g.crop_width, cells.stride, g.depth_min, g.depth_max, g.depth_step, cells.centre
        )  # (D, Hf, Wf, 3) float64, cell j at stride j + centre
        self.register_buffer("frustum", frustum, persistent=False)
        self.z_range = (g.point_range[2], g.point_range[5])
        self.compute_dtype = compute_dtype

    def forward(
        self,
        features: torch.Tensor,
        intrinsics: torch.Tensor,
        camera_to_lidar: torch.Tensor,
        image_aug: torch.Tensor,
        lidar_aug: torch.Tensor,
        image_batch: torch.Tensor,
        batch_size: int | None = None,
        with_bev: bool = True,
    ) -> LiftOutput:
        """features (N, F, Hf, Wf); geometry (N, 3|4, 3|4); image_batch (N,) sample of each image."""
        d, hf, wf, _ = self.frustum.shape
        if tuple(features.shape[-2:]) != (hf, wf):
            raise ValueError(
                f"feature map {tuple(features.shape[-2:])} does not match the frustum "
                f"{(hf, wf)} of geometry.crop_* / geometry.feature_stride"
            )
        b = int(image_batch.max()) + 1 if batch_size is None else batch_size
        params = camera_parameters(intrinsics, image_aug, camera_to_lidar, lidar_aug)  # (N, 27)
        with autocast_context(features.device.type, self.compute_dtype):
            logits, context = self.depth_net(self.bridge(features), params)
        logits, context = logits.float(), context.float()  # (N, D, Hf, Wf), (N, C, Hf, Wf)
        if not with_bev:  # depth-only step (two-stage schedule): no frustum cells, no pooling
            return LiftOutput(logits, None, None, b, self.grid_spec.size)
        depth = logits.softmax(dim=1)
        with torch.no_grad():
            offset = image_batch.to(torch.int64) * self.grid_spec.num_cells  # (N,)
            cells = ray_cells(
                self.frustum,
                self.grid_spec,
                intrinsics,
                camera_to_lidar,
                image_aug,
                lidar_aug,
                self.z_range,
                offset,
            )  # (N, D, Hf, Wf) int32
            index = prepare_pool_index(cells, b * self.grid_spec.num_cells)
        pooled = bev_pool(depth, context, index)  # (B * S * S, C)
        return LiftOutput(logits, F.normalize(pooled, dim=1), index.occupied, b, self.grid_spec.size)


def build_depth_lift(
    model_cfg: ModelConfig,
    geometry_cfg: GeometryConfig,
    precision_cfg: PrecisionConfig | None = None,
    device: torch.device | str = "cpu",
) -> BEVLift:
    """The trainable depth/lift branch; dense convs autocast in the image dtype resolved for `device`.

    Without `precision_cfg` it computes in float32; the caller moves it to `device`.
    """
    dtype = resolve_image_dtype(precision_cfg, device) if precision_cfg is not None else torch.float32
    return BEVLift(model_cfg, geometry_cfg, dtype)
