"""The segmentation model: the pretraining's 3D UNet backbone without heads + a fresh classifier.

`SegmentationModel.backbone` is the same `SparseUNet` the student trains (same module names, so
the exported `backbone.pt` loads key for key); `classifier` is a per-voxel linear map
planes[7] (96) -> num_classes, which is the 1x1x1 sparse convolution of the SLidR code.
The logits of the ignore class exist but are never a target and never predicted.

Parameter groups: the trunk (backbone) and the head (classifier) get their own learning rates
(`param_groups`). Linear probing (`freeze_backbone`) sets `requires_grad=False` on the backbone
and keeps it in eval mode whatever `train()` is asked, so its BatchNorm statistics stay those
of the pretraining.

Like the student, the sparse side runs in float32 whatever autocast surrounds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hvdistill.config import LidarModelConfig
from hvdistill.models.lidar import SparseUNet, conv_algo, sparse_input


class SegmentationModel(nn.Module):
    """Voxels -> per-voxel class logits (V, num_classes)."""

    def __init__(self, cfg: LidarModelConfig, num_classes: int):
        super().__init__()
        self.backbone = SparseUNet(cfg, conv_algo("cpu"))  # algorithm replaced per input device
        self.classifier = nn.Linear(self.backbone.out_channels, num_classes)
        self.frozen_backbone = False

    def features(
        self,
        voxel_coords: torch.Tensor,
        voxel_features: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
    ) -> torch.Tensor:
        """(V, 4) int (batch, z, y, x) coords, (V, C_in) features -> (V, planes[7]) float32."""
        with torch.autocast(device_type=voxel_features.device.type, enabled=False):
            x = sparse_input(voxel_coords, voxel_features.float(), spatial_shape, batch_size)
            return self.backbone(x).features  # (V, 96)

    def forward(
        self,
        voxel_coords: torch.Tensor,
        voxel_features: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
    ) -> torch.Tensor:
        """(V, 4) coords, (V, C_in) features -> (V, num_classes) logits, in the input voxel order."""
        feats = self.features(voxel_coords, voxel_features, spatial_shape, batch_size)  # (V, 96)
        if self.frozen_backbone:
            feats = feats.detach()
        return self.classifier(feats)  # (V, num_classes)

    def freeze_backbone(self) -> None:
        """Linear probing: no gradient into the backbone, which stays in eval mode (BN frozen)."""
        self.frozen_backbone = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def param_groups(self, lr_trunk: float, lr_head: float) -> list[dict]:
        """SGD parameter groups: [trunk at lr_trunk (absent when frozen), head at lr_head]."""
        groups = [{"name": "head", "params": list(self.classifier.parameters()), "lr": lr_head}]
        if not self.frozen_backbone:
            groups.insert(0, {"name": "trunk", "params": list(self.backbone.parameters()), "lr": lr_trunk})
        return groups


def build_segmentation_model(
    cfg: LidarModelConfig, num_classes: int, device: torch.device | str = "cpu"
) -> SegmentationModel:
    """A randomly initialised segmentation model on `device` (load a backbone with backbone.py)."""
    if num_classes < 2:
        raise ValueError(f"a segmentation model needs >= 2 classes, got {num_classes}")
    return SegmentationModel(cfg, num_classes).to(device)
