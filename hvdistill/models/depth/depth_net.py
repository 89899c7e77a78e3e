"""The bridge and the camera-aware depth net (BEVDepth's DepthNet layout).

`Bridge` maps the teacher head's feature_dim map at 1/4 resolution back to bridge_channels
(2048 in the paper) with a 1x1 conv + BN + ReLU. `DepthNet` follows BEVDepth:
a 3x3 reduce conv to mid_channels; a camera-parameter vector (27 numbers: fx, fy, cx, cy; the
image-augmentation matrix's 2x3 affine part; the LiDAR augmentation's xx, xy, yx, yy, zz
entries; the camera -> LiDAR rotation and translation as a 3x4 matrix) batch-normalised and
passed through two MLPs that drive squeeze-excitation gates of the depth and the context
branches; context = 1x1 conv to context_channels; depth = residual BasicBlocks, ASPP, a 3x3
conv and a 1x1 conv to the depth bins. BEVDepth uses a deformable 3x3 conv after the ASPP;
this implementation uses a plain 3x3 conv there (no deformable-conv dependency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.config import DepthModelConfig
from hvdistill.models.image.resnet import BasicBlock

CAMERA_PARAM_DIM = 27  # the layout built by `camera_parameters`


def camera_parameters(
    intrinsics: torch.Tensor, image_aug: torch.Tensor, camera_to_lidar: torch.Tensor, lidar_aug: torch.Tensor
) -> torch.Tensor:
    """(N, 27) float32 camera-parameter vector per image (BEVDepth's mlp_input)."""
    k, a, m = intrinsics, image_aug, lidar_aug
    parts = [
        k[:, 0, 0],
        k[:, 1, 1],
        k[:, 0, 2],
        k[:, 1, 2],
        a[:, 0, 0],
        a[:, 0, 1],
        a[:, 0, 2],
        a[:, 1, 0],
        a[:, 1, 1],
        a[:, 1, 2],
        m[:, 0, 0],
        m[:, 0, 1],
        m[:, 1, 0],
        m[:, 1, 1],
        m[:, 2, 2],
    ]
    sensor = camera_to_lidar[:, :3, :4].reshape(-1, 12)  # (N, 12)
    return torch.cat([torch.stack(parts, dim=1), sensor], dim=1).float()  # (N, 27)


class Bridge(nn.Sequential):
    """(N, feature_dim, h, w) -> (N, bridge_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class MLP(nn.Sequential):
    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)
        )


class SEGate(nn.Module):
    """x * sigmoid(conv(relu(conv(gate_input)))) with the gate from camera parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1)
        self.conv_expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        g = self.conv_expand(F.relu(self.conv_reduce(gate)))  # (N, C, 1, 1)
        return x * torch.sigmoid(g)


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (BEVDepth/DeepLab-v3): dilated branches + global pool."""

    def __init__(self, channels: int, dilations: list[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            _conv_bn_relu(channels, channels, 1 if d == 1 else 3, d) for d in dilations
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(channels, channels, 1))
        self.project = _conv_bn_relu(channels * (len(dilations) + 1), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        out = torch.cat([b(x) for b in self.branches] + [pooled], dim=1)  # (N, C * (k+1), h, w)
        return self.dropout(self.project(out))


class DepthNet(nn.Module):
    """(N, C_in, h, w) + (N, 27) camera parameters -> depth logits (N, D, h, w), context (N, C, h, w)."""

    def __init__(self, in_channels: int, depth_bins: int, cfg: DepthModelConfig) -> None:
        super().__init__()
        if cfg.camera_param_dim != CAMERA_PARAM_DIM:
            raise ValueError(
                f"model.depth.camera_param_dim={cfg.camera_param_dim}, but the camera "
                f"parameter vector has {CAMERA_PARAM_DIM} entries; set it to {CAMERA_PARAM_DIM}"
            )
        mid = cfg.mid_channels
        self.reduce_conv = _conv_bn_relu(in_channels, mid, 3)
        self.camera_bn = nn.BatchNorm1d(cfg.camera_param_dim)
        self.depth_mlp = MLP(cfg.camera_param_dim, mid, mid)
        self.context_mlp = MLP(cfg.camera_param_dim, mid, mid)
        self.depth_se = SEGate(mid)
        self.context_se = SEGate(mid)
        self.context_conv = nn.Conv2d(mid, cfg.context_channels, 1)
        layers: list[nn.Module] = [BasicBlock(mid, mid) for _ in range(cfg.residual_blocks)]
        if cfg.aspp:
            layers.append(ASPP(mid, cfg.aspp_dilations, cfg.aspp_dropout))
        layers += [nn.Conv2d(mid, mid, 3, padding=1)]  # plain, not DCN
        self.depth_conv = nn.Sequential(*layers)
        self.depth_out = nn.Conv2d(mid, depth_bins, 1)  # run in fp32 (see forward)

    def forward(self, x: torch.Tensor, camera_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "the depth net normalises camera parameters over the images of a step and "
                "needs >= 2 images per rank in training; with a 1-camera dataset (SemanticKITTI) "
                "use train.micro_batch >= 2"
            )
        params = self.camera_bn(camera_params.float())  # (N, 27)
        x = self.reduce_conv(x)  # (N, mid, h, w)
        context = self.context_conv(self.context_se(x, self.context_mlp(params)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(params)[..., None, None]))
        with torch.autocast(device_type=x.device.type, enabled=False):  # logits stay fp32 under bf16
            depth = self.depth_out(depth.float())
        return depth, context  # (N, D, h, w), (N, C, h, w)
