"""The public 3D student: sparse UNet backbone + IPV and BEV heads, built from the config.

`build_lidar_model(model_cfg, geometry, device)` checks that the voxel and BEV grids agree
(the config's own checks, `bev_grid_problems` and `lidar_problems` in hvdistill/config/, which
`load_config` runs too),
picks spconv's conv algorithm for `device` at construction (Native on CPU, spconv's choice on
GPU; see `sparse.conv_algo`) and returns a `LidarStudent` on that device. A model built for
GPU refuses CPU inputs with an explanation (spconv's GPU algorithms would fail deep inside);
build it again with device="cpu", or load its state dict (plain tensors, one weight layout for
every algorithm) into a CPU-built model.

Precision: sparse features run in float32 unless `LidarModelConfig.sparse_dtype` is float16
(GPU only: the backbone and BEV convs run under CUDA fp16 autocast). Any surrounding autocast
is switched off for the sparse side otherwise (spconv has no bf16). Heads compute in float32.

`student.backbone` alone gives the 96-d per-voxel features for fine-tuning:
`student.backbone(sparse_input(coords, feats, shape, batch_size)).features`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from hvdistill.config import GeometryConfig, LidarModelConfig, ModelConfig
from hvdistill.config.geometry import bev_grid_problems, bev_stride
from hvdistill.config.model import lidar_problems
from hvdistill.models.lidar.heads import BEVHead, IPVHead
from hvdistill.models.lidar.sparse import conv_algo, sparse_input
from hvdistill.models.lidar.unet import SparseUNet


class LidarOutput(NamedTuple):
    voxel_features: torch.Tensor  # (V, planes[7]) in the input voxel order
    ipv: torch.Tensor  # (V, feature_dim) L2-normalised
    bev: torch.Tensor  # (K, feature_dim) L2-normalised
    bev_indices: torch.Tensor  # (K, 3) int64 (batch, iy, ix), unique, sorted


class LidarStudent(nn.Module):
    """Voxels -> per-voxel features, IPV features and BEV cell features."""

    def __init__(
        self,
        cfg: LidarModelConfig,
        feature_dim: int,
        bev_stride: int,
        bev_size: int,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        algo = conv_algo(device)
        self.device_type = torch.device(device).type
        self.sparse_dtype = cfg.sparse_dtype
        self.backbone = SparseUNet(cfg, algo)
        out = self.backbone.out_channels
        self.ipv_head = IPVHead(out, feature_dim)
        self.bev_head = BEVHead(out, feature_dim, cfg.bev_head, bev_stride, bev_size, cfg.bev_pool, algo)

    def _sparse_context(self) -> contextlib.AbstractContextManager:
        """fp16 autocast for the sparse convs when configured (CUDA only), else nothing."""
        if self.sparse_dtype == "float16":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def forward(
        self,
        voxel_coords: torch.Tensor,
        voxel_features: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
    ) -> LidarOutput:
        """(V, 4) int (batch, z, y, x) coords, (V, C_in) features on a [Z, Y, X] grid."""
        if voxel_features.device.type != self.device_type:
            raise RuntimeError(
                f"this LidarStudent was built for {self.device_type} (spconv's conv algorithm is "
                f"fixed at construction) but got {voxel_features.device.type} inputs; build it "
                f"with build_lidar_model(..., device='{voxel_features.device.type}')"
            )
        x = sparse_input(voxel_coords, voxel_features.float(), spatial_shape, batch_size)
        with torch.autocast(device_type=voxel_features.device.type, enabled=False):
            with self._sparse_context():
                y = self.backbone(x)  # (V, 96) sparse
                pooled, bev_indices = self.bev_head.collapse(y)  # (K, 96), (K, 3)
            voxel_feats = y.features.float()  # (V, 96)
            ipv = self.ipv_head(voxel_feats)  # (V, D)
            bev = self.bev_head.project(pooled.float())  # (K, D)
        return LidarOutput(voxel_feats, ipv, bev, bev_indices)


def lidar_model_problems(
    cfg: LidarModelConfig, geometry: GeometryConfig, device: torch.device | str
) -> list[str]:
    """The config's own BEV-grid and LiDAR checks (hvdistill/config/) plus the device's, with fixes."""
    p = bev_grid_problems(geometry) + lidar_problems(cfg, geometry)
    if cfg.sparse_dtype == "float16" and torch.device(device).type != "cuda":
        p.append("model.lidar.sparse_dtype: float16 needs a CUDA device; set it to float32")
    return p


def build_lidar_model(
    model_cfg: ModelConfig, geometry: GeometryConfig, device: torch.device | str = "cpu"
) -> LidarStudent:
    """The 3D student for `device` (spconv's conv algorithm is chosen here, once)."""
    problems = lidar_model_problems(model_cfg.lidar, geometry, device)
    if problems:
        raise ValueError("invalid LiDAR model config:\n  " + "\n  ".join(problems))
    model = LidarStudent(
        model_cfg.lidar, model_cfg.feature_dim, bev_stride(geometry), geometry.bev_size, device
    )
    return model.to(device)
