"""The frozen 2D teacher: a dilated self-supervised ResNet plus the trainable 64-d IPV head.

`ImageTeacher.forward` takes images with values in [0, 1] (N, 3, H, W) and normalises them
itself with the configured mean/std, so callers never duplicate the checkpoint's input
statistics. The backbone (ResNet-50 at output stride 4 by default, ResNet-18 for CPU tests) is
frozen: its parameters have requires_grad False, it runs under no_grad, and it stays in eval
mode (BatchNorm statistics fixed) even when the parent module is put in train(). The head is
a 1x1 conv C_b -> feature_dim whose output at 1/4 resolution feeds the depth bridge; for the
IPV branch it is upsampled x output_stride (bilinear, align_corners=False, i.e. the same
half-pixel-centre convention as the frustum) and L2-normalised over channels.
The dense image side runs under autocast in the dtype `precision.image_dtype` resolves to on the
build device (hvdistill/precision.py: `auto` = bf16 where the hardware runs it natively, fp32
elsewhere); every output is returned as float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.config import ModelConfig, PrecisionConfig
from hvdistill.models.image.resnet import ARCHITECTURES, dilation_for_output_stride
from hvdistill.models.image.weights import LoadReport, load_teacher_weights
from hvdistill.precision import resolve_image_dtype


class TeacherOutput(NamedTuple):
    backbone: torch.Tensor  # (N, C_b, H / s, W / s) float32 frozen backbone features
    head: torch.Tensor  # (N, feature_dim, H / s, W / s) float32 head output, not normalised
    ipv: torch.Tensor  # (N, feature_dim, H, W) float32 upsampled, L2-normalised over channels


def autocast_context(device_type: str, dtype: torch.dtype) -> torch.autocast:
    """Autocast in `dtype` on `device_type`; disabled for float32."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


class ImageTeacher(nn.Module):
    """Frozen dilated ResNet + trainable 1x1 head; see the module docstring for the contract."""

    def __init__(
        self,
        arch: str = "resnet50",
        feature_dim: int = 64,
        output_stride: int = 4,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"model.image.arch {arch!r} is not one of {sorted(ARCHITECTURES)}")
        self.backbone = ARCHITECTURES[arch](dilation_for_output_stride(output_stride))
        self.backbone.fc = nn.Identity()  # the teacher never classifies; checkpoint fc is dropped
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.output_stride = output_stride
        self.head = nn.Conv2d(self.backbone.out_channels, feature_dim, kernel_size=1)
        mean_t = torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        std_t = torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.compute_dtype = compute_dtype
        self.load_report: LoadReport | None = None  # set when weights come from a file

    @property
    def backbone_channels(self) -> int:
        return self.backbone.out_channels

    def train(self, mode: bool = True) -> ImageTeacher:
        """Only the head follows `mode`; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """images (N, 3, H, W) in [0, 1], H and W multiples of output_stride."""
        h, w = images.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of output stride {self.output_stride}")
        x = (images.float() - self.mean) / self.std  # (N, 3, H, W)
        with autocast_context(images.device.type, self.compute_dtype):
            with torch.no_grad():
                feats = self.backbone.features(x)  # (N, C_b, H/s, W/s)
            head = self.head(feats)  # (N, D, H/s, W/s)
        feats, head = feats.float(), head.float()
        up = F.interpolate(head, size=(h, w), mode="bilinear", align_corners=False)  # (N, D, H, W)
        return TeacherOutput(feats, head, F.normalize(up, dim=1))


def build_image_teacher(
    model_cfg: ModelConfig, precision_cfg: PrecisionConfig, device: torch.device | str = "cpu"
) -> ImageTeacher:
    """The teacher of `model_cfg.image` computing in the image dtype resolved for `device`.

    Weights come from its local file (or an explicit random init); the caller moves it to `device`.
    """
    icfg = model_cfg.image
    if not icfg.weights and not icfg.random_init:
        raise ValueError(
            "model.image.weights: no teacher checkpoint given; set model.image.weights="
            "/path/to/checkpoint.pth, or model.image.random_init=true explicitly"
        )
    if icfg.weights and icfg.random_init:
        raise ValueError("model.image: both weights and random_init are set; choose one")
    teacher = ImageTeacher(
        icfg.arch,
        model_cfg.feature_dim,
        icfg.output_stride,
        icfg.mean,
        icfg.std,
        resolve_image_dtype(precision_cfg, device),
    )
    if icfg.weights:
        teacher.load_report = load_teacher_weights(teacher, icfg.weights, icfg.weights_format)
    return teacher


__all__ = ["ImageTeacher", "TeacherOutput", "build_image_teacher", "load_teacher_weights", "LoadReport"]
