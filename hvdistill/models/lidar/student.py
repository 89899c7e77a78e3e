"""The public 3D student: sparse UNet backbone + IPV and BEV heads, built from the config.

`build_lidar_model(model_cfg, geometry, device)` checks that the voxel and BEV grids agree
(the config's own checks, `bev_grid_problems` and `lidar_problems` in hvdistill/config/, which
`load_config` runs too) and returns a `LidarStudent` on `device`. Nothing about the device is
captured at build time: the sparse modules pick spconv's conv algorithm from their input's
device at every forward (`sparse.match_conv_algo`), so `.to(device)` (what DeepSpeed does) and
`.cpu()` / `.cuda()` work at any time.

Precision: the sparse side is float32 whatever surrounds it: inputs are cast to the weights'
dtype (float32) and
any outer autocast (e.g. the loop's bf16) is switched off for the whole student (spconv has no
bf16), unless `LidarModelConfig.sparse_dtype` is float16 (CUDA only: the backbone and BEV convs
run under CUDA fp16 autocast). Heads compute in float32; every output is float32. The weights
stay float32: a model cast to bf16 is refused with an explanation.

`student.backbone` alone gives the 96-d per-voxel features for fine-tuning:
`student.backbone(sparse_input(coords, feats, shape, batch_size)).features`; the backbone's
weights travel as a plain state dict (`backbone_state_dict()` / `load_backbone_state_dict`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from hvdistill.config import GeometryConfig, LidarModelConfig, ModelConfig
from hvdistill.config.geometry import bev_grid_problems, bev_stride
from hvdistill.config.model import lidar_problems
from hvdistill.models.lidar.heads import BEVHead, IPVHead
from hvdistill.models.lidar.sparse import conv_algo, sparse_input
from hvdistill.models.lidar.unet import SparseUNet
from hvdistill.models.state import describe, key_problems


class LidarOutput(NamedTuple):
    voxel_features: torch.Tensor  # (V, planes[7]) in the input voxel order
    ipv: torch.Tensor  # (V, feature_dim) L2-normalised
    bev: torch.Tensor  # (K, feature_dim) L2-normalised
    bev_indices: torch.Tensor  # (K, 3) int64 (batch, iy, ix), unique, sorted


class LidarStudent(nn.Module):
    """Voxels -> per-voxel features, IPV features and BEV cell features."""

    def __init__(self, cfg: LidarModelConfig, feature_dim: int, bev_stride: int, bev_size: int):
        super().__init__()
        algo = conv_algo("cpu")  # valid in every spconv build; replaced per input device at forward
        self.sparse_dtype = cfg.sparse_dtype
        self.backbone = SparseUNet(cfg, algo)
        out = self.backbone.out_channels
        self.ipv_head = IPVHead(out, feature_dim)
        self.bev_head = BEVHead(
            out, feature_dim, cfg.bev_head, bev_stride, bev_size, cfg.bev_pool, algo, cfg.bn_momentum
        )

    def _sparse_context(self, device_type: str) -> contextlib.AbstractContextManager:
        """fp16 autocast for the sparse convs when configured and the inputs are on CUDA, else nothing."""
        if self.sparse_dtype == "float16" and device_type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _weight_dtype(self) -> torch.dtype:
        dtype = self.ipv_head.proj.weight.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"the LiDAR student's weights are {dtype}; spconv has no bf16 and the sparse side "
                f"keeps float32 weights (fp16 compute is model.lidar.sparse_dtype=float16 on CUDA): "
                f"keep the model in float32 and use autocast instead of casting it"
            )
        return dtype

    def forward(
        self,
        voxel_coords: torch.Tensor,
        voxel_features: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
    ) -> LidarOutput:
        """(V, 4) int (batch, z, y, x) coords, (V, C_in) features on a [Z, Y, X] grid."""
        device_type = voxel_features.device.type
        dtype = self._weight_dtype()
        with torch.autocast(device_type=device_type, enabled=False):  # no outer bf16 reaches spconv
            x = sparse_input(voxel_coords, voxel_features.to(dtype), spatial_shape, batch_size)
            with self._sparse_context(device_type):
                y = self.backbone(x)  # (V, 96) sparse
                pooled, bev_indices = self.bev_head.collapse(y)  # (K, 96), (K, 3)
            voxel_feats = y.features.to(dtype)  # (V, 96)
            ipv = self.ipv_head(voxel_feats)  # (V, D)
            bev = self.bev_head.project(pooled.to(dtype))  # (K, D)
        return LidarOutput(voxel_feats, ipv, bev, bev_indices)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The sparse UNet's weights and BN statistics (no heads) as plain detached tensors."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def load_backbone_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> list[str]:
        """Load `backbone_state_dict()` output into the backbone; returns the keys not loaded.

        Strict (the default): every backbone key present with its shape, nothing extra, else a
        ValueError listing the missing, unexpected and mismatched keys. Non-strict loads the
        matching keys and returns the rest of the backbone's keys.
        """
        own = self.backbone.state_dict()
        problems = key_problems(own, state)
        if strict and any(problems.values()):
            raise ValueError(f"backbone state dict does not match the LiDAR backbone: {describe(problems)}")
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.backbone.load_state_dict(usable, strict=False)
        return sorted(k for k in own if k not in usable)


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
    """The 3D student, checked against `device` (fp16 needs CUDA) and moved there."""
    problems = lidar_model_problems(model_cfg.lidar, geometry, device)
    if problems:
        raise ValueError("invalid LiDAR model config:\n  " + "\n  ".join(problems))
    model = LidarStudent(model_cfg.lidar, model_cfg.feature_dim, bev_stride(geometry), geometry.bev_size)
    return model.to(device)
