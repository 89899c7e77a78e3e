"""The frozen 2D teacher: a dilated self-supervised ResNet plus the trainable 64-d IPV head.

`ImageTeacher.forward` takes images with values in [0, 1] (N, 3, H, W) and normalises them
itself with the configured mean/std, so callers never duplicate the checkpoint's input
statistics. The backbone (ResNet-50 at output stride 4 by default, ResNet-18 for CPU tests) is
frozen: its parameters have requires_grad False, it runs under no_grad, and it stays in eval
mode (BatchNorm statistics fixed) even when the parent module is put in train(). What the
forward runs is a copy prepared for inference (BatchNorm folded into the convolutions,
channels-last; `model.image.fold_batchnorm` / `channels_last`), rebuilt whenever the backbone's
weights change (hvdistill/models/image/inference.py).

The frozen backbone is not a registered submodule: it is held in a plain attribute container
(`FrozenModule`), so it is absent from `parameters()`, `named_parameters()`, `buffers()`,
`modules()` and `state_dict()` of the teacher and of every module containing it. An engine
(DeepSpeed ZeRO-3 partitioning, optimiser construction, checkpoints, parameter broadcast,
SyncBatchNorm conversion) never sees it; `teacher.backbone` still returns it. `_apply` is
overridden so that device moves (`.to(device)`, `.cuda()`, `.cpu()`, `to_empty`) move it too,
while dtype casts (`.half()`, `.bfloat16()`, `.double()`, `.to(dtype)`) leave it in float32:
its compute dtype is chosen by autocast (`compute_dtype`), and a cast backbone would no
longer match its float32 input when autocast is off. The head is
a 1x1 conv C_b -> feature_dim whose output at 1/4 resolution feeds the depth bridge; for the
IPV branch it is upsampled x output_stride and L2-normalised over channels.

Feature-cell centres: `feature_grid` derives (stride, centre) from the backbone's modules, so
that cell j's receptive field is centred at pixel stride * j + centre (pixel centres at integer
coordinates). For the torchvision ResNets centre = 0 at every output stride; the teacher refuses
a backbone whose centre differs from `FEATURE_CELL_CENTRE` (hvdistill/geometry/frustum.py), the
convention the frustum and the depth targets share. The IPV upsampling (`upsample_cells`) puts
cell j's feature exactly at pixel stride * j + centre and interpolates linearly in between,
replicating the border cells outwards. (Bilinear `interpolate` with align_corners=False would
put it at stride * j + (stride - 1) / 2, 1.5 px off at stride 4; align_corners=True, SLidR's,
at j * (W - 1) / (Wf - 1), drifting to 3 px off at the right edge of a 416 px crop.)
The dense image side runs under autocast in the dtype `precision.image_dtype` resolves to on the
build device (hvdistill/precision.py: `auto` = bf16 where the hardware runs it natively, fp32
elsewhere); every output is returned as float32. The backbone map (N, C_b, H / s, W / s), the
largest tensor of the step (about 1.1 GB in float32 at 24 paper-size images), is returned only
when asked for (`with_backbone=True`): otherwise the only copy alive after the forward is the
one the head keeps for its weight gradient, in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.config import ModelConfig, PrecisionConfig
from hvdistill.geometry.frustum import FEATURE_CELL_CENTRE
from hvdistill.models.image.inference import InferenceCopy
from hvdistill.models.image.resnet import ARCHITECTURES, ResNet, dilation_for_output_stride
from hvdistill.models.image.weights import LoadReport, load_teacher_weights
from hvdistill.precision import resolve_image_dtype


class TeacherOutput(NamedTuple):
    backbone: torch.Tensor | None  # (N, C_b, H / s, W / s) float32, only with `with_backbone=True`
    head: torch.Tensor  # (N, feature_dim, H / s, W / s) float32 head output, not normalised
    ipv: torch.Tensor  # (N, feature_dim, H, W) float32 upsampled, L2-normalised over channels


def autocast_context(device_type: str, dtype: torch.dtype) -> torch.autocast:
    """Autocast in `dtype` on `device_type`; disabled for float32."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


class FrozenModule:
    """A module held outside nn.Module's registry (see the module docstring); not an nn.Module."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module


class FeatureGrid(NamedTuple):
    stride: int  # pixels between neighbouring cells
    centre: float  # pixel of cell 0's receptive-field centre: cell j at stride * j + centre


def _along_width(value: int | tuple[int, ...]) -> int:
    return value[-1] if isinstance(value, tuple) else value


def feature_grid(backbone: nn.Module) -> FeatureGrid:
    """Stride and receptive-field centre of `backbone.features`, composed over its modules.

    Walks the convolutions and max-pools in registration order, which for a ResNet is the order
    of its main path (stem, then each block's convs); the residual projections (`downsample`)
    run in parallel to a block and are skipped. A layer with kernel k, stride s, padding p and
    dilation d centres its output i at input s * i + d (k - 1) / 2 - p. Along the width (the
    ResNets are square). Empirically confirmed by tests/models/image/test_feature_centres.py.
    """
    stride, centre = 1, 0.0
    for name, m in backbone.named_modules():
        if "downsample" in name or not isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            continue
        k, s = _along_width(m.kernel_size), _along_width(m.stride)
        p, d = _along_width(m.padding), _along_width(m.dilation)
        centre += stride * (d * (k - 1) / 2 - p)
        stride *= s
    return FeatureGrid(stride, centre)


def upsample_cells(head: torch.Tensor, stride: int, centre: float) -> torch.Tensor:
    """(N, C, Hf, Wf) -> (N, C, stride * Hf, stride * Wf) with cell j's value at pixel stride * j + centre.

    Bilinear between cell centres, border cells replicated outwards. `centre` must be a whole
    pixel in [0, stride]: the map is padded by one replicated cell, interpolated with
    align_corners=True onto a grid whose step is exactly 1 / stride cell, and cropped.
    """
    c = int(centre)
    if c != centre or not 0 <= c <= stride:
        raise ValueError(f"feature-cell centre {centre} must be a whole pixel in [0, {stride}]")
    hf, wf = head.shape[-2:]
    lead = 1 if c > 0 else 0  # a replicated cell before the first when pixels precede its centre
    padded = F.pad(head, (lead, 1, lead, 1), mode="replicate")  # (N, C, Hf + lead + 1, Wf + lead + 1)
    hp, wp = padded.shape[-2:]
    size = (stride * (hp - 1) + 1, stride * (wp - 1) + 1)  # output pixel y samples padded cell y / stride
    up = F.interpolate(padded, size=size, mode="bilinear", align_corners=True)  # (N, C, ~s Hp, ~s Wp)
    y0 = stride * lead - c
    return up[..., y0 : y0 + stride * hf, y0 : y0 + stride * wf]  # (N, C, s Hf, s Wf)


def _target_device(fn: Callable[[torch.Tensor], torch.Tensor], current: torch.device) -> torch.device:
    """The device `fn` (an `nn.Module._apply` function) sends a float32 tensor on `current` to."""
    return fn(torch.empty(0, dtype=torch.float32, device=current)).device


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
        fold_batchnorm: bool = True,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"model.image.arch {arch!r} is not one of {sorted(ARCHITECTURES)}")
        backbone = ARCHITECTURES[arch](dilation_for_output_stride(output_stride))
        backbone.fc = nn.Identity()  # the teacher never classifies; checkpoint fc is dropped
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.frozen = FrozenModule(backbone.eval())  # not a child: see the module docstring
        self.inference = InferenceCopy(fold_batchnorm, channels_last)  # what forward runs (inference.py)
        self.output_stride = output_stride
        self.grid = feature_grid(backbone)
        if self.grid != (output_stride, FEATURE_CELL_CENTRE):
            raise ValueError(
                f"the {arch} teacher's feature cells sit at stride {self.grid.stride}, centre "
                f"{self.grid.centre} px; the frustum and depth targets assume stride {output_stride}, "
                f"centre {FEATURE_CELL_CENTRE} (hvdistill/geometry/frustum.py: FEATURE_CELL_CENTRE)"
            )
        self.head = nn.Conv2d(backbone.out_channels, feature_dim, kernel_size=1)
        mean_t = torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        std_t = torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.compute_dtype = compute_dtype
        self.load_report: LoadReport | None = None  # set when weights come from a file

    @property
    def backbone(self) -> ResNet:
        """The frozen backbone (not a registered submodule)."""
        return self.frozen.module

    @property
    def backbone_channels(self) -> int:
        return self.backbone.out_channels

    def train(self, mode: bool = True) -> ImageTeacher:
        """Only the head follows `mode`; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> ImageTeacher:
        """Registered parts as usual; the frozen backbone follows device moves only (see above)."""
        super()._apply(fn, recurse)
        backbone = self.backbone
        current = next(backbone.parameters()).device
        device = _target_device(fn, current)
        if device != current:
            if current.type == "meta":  # nothing to copy: storage only, weights reloaded by the caller
                backbone.to_empty(device=device)
            else:
                backbone.to(device)
        return self

    def forward(self, images: torch.Tensor, with_backbone: bool = False) -> TeacherOutput:
        """images (N, 3, H, W) in [0, 1], H and W multiples of output_stride.

        `with_backbone=True` also returns the backbone map in float32 (see the module docstring).
        """
        h, w = images.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of output stride {self.output_stride}")
        x = (images.float() - self.mean) / self.std  # (N, 3, H, W)
        with autocast_context(images.device.type, self.compute_dtype):
            with torch.no_grad():
                frozen = self.inference.get(self.backbone)  # folded, NHWC: same features
                feats = frozen.features(self.inference.input(x)).contiguous()  # (N, C_b, H/s, W/s)
            del x
            if not torch.is_autocast_enabled(images.device.type):  # e.g. a float64 head; no copy else
                feats = feats.to(self.head.weight.dtype)
            head = self.head(feats).float()  # (N, D, H/s, W/s)
        backbone = feats.float() if with_backbone else None
        del feats  # the head's autograd keeps what its weight gradient needs
        up = upsample_cells(head, self.grid.stride, self.grid.centre)  # (N, D, H, W), cell j at s j + c
        return TeacherOutput(backbone, head, F.normalize(up, dim=1))


def build_image_teacher(
    model_cfg: ModelConfig, precision_cfg: PrecisionConfig, device: torch.device | str = "cpu"
) -> ImageTeacher:
    """The teacher of `model_cfg.image` computing in the image dtype resolved for `device`.

    Weights come from its local file, loaded strictly unless `model.image.allow_partial_weights`
    (or an explicit random init from `model.image.random_init_seed`: the backbone is never
    broadcast between ranks, so every rank must build the same one); the caller moves it to
    `device`.
    """
    icfg = model_cfg.image
    if not icfg.weights and not icfg.random_init:
        raise ValueError(
            "model.image.weights: no teacher checkpoint given; set model.image.weights="
            "/path/to/checkpoint.pth, or model.image.random_init=true explicitly"
        )
    if icfg.weights and icfg.random_init:
        raise ValueError("model.image: both weights and random_init are set; choose one")
    with torch.random.fork_rng(devices=[]):  # same random teacher on every rank; global RNG untouched
        torch.manual_seed(icfg.random_init_seed)
        teacher = ImageTeacher(
            icfg.arch,
            model_cfg.feature_dim,
            icfg.output_stride,
            icfg.mean,
            icfg.std,
            resolve_image_dtype(precision_cfg, device),
            icfg.fold_batchnorm,
            icfg.channels_last,
        )
    if icfg.weights:
        teacher.load_report = load_teacher_weights(
            teacher, icfg.weights, icfg.weights_format, icfg.allow_partial_weights
        )
    return teacher


__all__ = [
    "FeatureGrid",
    "ImageTeacher",
    "TeacherOutput",
    "build_image_teacher",
    "feature_grid",
    "load_teacher_weights",
    "LoadReport",
    "upsample_cells",
]
