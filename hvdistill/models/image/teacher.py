"""The frozen 2D teacher: a self-supervised ResNet or ViT plus the trainable 64-d IPV head.

`ImageTeacher.forward` takes images with values in [0, 1] (N, 3, H, W) and normalises them
itself with the configured mean/std, so callers never duplicate the checkpoint's input
statistics. The backbone is a torchvision-layout ResNet (ResNet-50 at output stride 4 by
default, ResNet-18 for CPU tests; hvdistill/models/image/resnet.py) or a DINOv2-layout ViT
(ViT-S/14, ViT-B/14, ..., optionally with register tokens; hvdistill/models/image/vit.py). It is
frozen: its parameters have requires_grad False, it runs under no_grad, and it stays in eval
mode (BatchNorm statistics fixed) even when the parent module is put in train(). For a ResNet
the forward runs a copy prepared for inference (BatchNorm folded into the convolutions,
channels-last; `model.image.fold_batchnorm` / `channels_last`), rebuilt whenever the backbone's
weights change (hvdistill/models/image/inference.py); a ViT has no BatchNorm and runs as it is.

The frozen backbone is not a registered submodule: it is held in a plain attribute container
(`FrozenModule`), so it is absent from `parameters()`, `named_parameters()`, `buffers()`,
`modules()` and `state_dict()` of the teacher and of every module containing it. An engine
(DeepSpeed ZeRO-3 partitioning, optimiser construction, checkpoints, parameter broadcast,
SyncBatchNorm conversion) never sees it; `teacher.backbone` still returns it. `_apply` is
overridden so that device moves (`.to(device)`, `.cuda()`, `.cpu()`, `to_empty`) move it too,
while dtype casts (`.half()`, `.bfloat16()`, `.double()`, `.to(dtype)`) leave it in float32:
its compute dtype is chosen by autocast (`compute_dtype`), and a cast backbone would no
longer match its float32 input when autocast is off. The head is a 1x1 conv
C_b -> feature_dim whose output on the feature grid feeds the depth bridge; for the IPV branch
it is upsampled to the crop and L2-normalised over channels.

Feature-cell centres: `feature_grid` derives (stride, centre) from the backbone's modules, so
that cell j sits at pixel stride * j + centre (pixel centres at integer coordinates): (s, 0)
for the torchvision ResNets at every output stride s, (14, 6.5) for a ViT/14 (its patch
embedding is its only convolution: token j embeds pixels [14 j, 14 j + 13]). The teacher
refuses a backbone that disagrees with `teacher_feature_grid` (hvdistill/geometry/frustum.py),
the description read from the config that the frustum and the depth targets share. A ViT takes
any crop: it pads right/bottom to whole patches, and the teacher keeps the cells centred inside
the crop (`FeatureGrid.cells`: for 224 x 416 at 14 px, all 16 x 30). A ResNet needs crop sides
that are multiples of its stride. The IPV upsampling (`upsample_cells`) puts cell j's feature
exactly at pixel stride * j + centre and interpolates linearly in between, replicating the
border cells outwards. (Bilinear `interpolate` with align_corners=False puts it at
stride * j + (stride - 1) / 2: 1.5 px off at a ResNet's stride 4, exact for a ViT;
align_corners=True, SLidR's, at j * (W - 1) / (Wf - 1), drifting to 3 px off at the right edge
of a 416 px crop.)
The dense image side runs under autocast in the dtype `precision.image_dtype` resolves to on the
build device (hvdistill/precision.py: `auto` = bf16 where the hardware runs it natively, fp32
elsewhere); every output is returned as float32. The backbone map (N, C_b, Hf, Wf), the
largest tensor of the step (about 1.1 GB in float32 at 24 paper-size images and a ResNet-50),
is returned only when asked for (`with_backbone=True`): otherwise the only copy alive after the
forward is the one the head keeps for its weight gradient, in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill.config import ModelConfig, PrecisionConfig
from hvdistill.geometry.frustum import FeatureGrid, teacher_feature_grid
from hvdistill.models.image.inference import InferenceCopy
from hvdistill.models.image.resnet import ARCHITECTURES, ResNet, dilation_for_output_stride
from hvdistill.models.image.vit import VIT_ARCHITECTURES, VisionTransformer, build_vit
from hvdistill.models.image.weights import LoadReport, load_teacher_weights
from hvdistill.precision import resolve_image_dtype


class TeacherOutput(NamedTuple):
    backbone: torch.Tensor | None  # (N, C_b, Hf, Wf) float32, only with `with_backbone=True`
    head: torch.Tensor  # (N, feature_dim, Hf, Wf) float32 head output, not normalised
    ipv: torch.Tensor  # (N, feature_dim, H, W) float32 upsampled, L2-normalised over channels


def autocast_context(device_type: str, dtype: torch.dtype) -> torch.autocast:
    """Autocast in `dtype` on `device_type`; disabled for float32."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


class FrozenModule:
    """A module held outside nn.Module's registry (see the module docstring); not an nn.Module."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module


def _along_width(value: int | tuple[int, ...]) -> int:
    return value[-1] if isinstance(value, tuple) else value


def feature_grid(backbone: nn.Module) -> FeatureGrid:
    """Stride and receptive-field centre of `backbone.features`, composed over its modules.

    Walks the convolutions and max-pools in registration order, which for a ResNet is the order
    of its main path (stem, then each block's convs); the residual projections (`downsample`)
    run in parallel to a block and are skipped. A layer with kernel k, stride s, padding p and
    dilation d centres its output i at input s * i + d (k - 1) / 2 - p. Along the width (the
    ResNets are square). A ViT's only convolution is its patch embedding (k = s = 14, p = 0):
    token j is centred on its own patch, 14 j + 6.5. Confirmed with input gradients by
    tests/models/image/test_feature_centres.py.
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


def upsample_cells(
    head: torch.Tensor, stride: int, centre: float, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """(N, C, Hf, Wf) -> (N, C, H, W) with cell j's value at pixel stride * j + centre.

    (H, W) = `size`, by default (stride * Hf, stride * Wf). Linear between cell centres, border
    cells replicated outwards. Two exact constructions:
    - `centre` a whole pixel in [0, stride] (the ResNets: 0): the map is padded by one replicated
      cell, interpolated with align_corners=True onto a grid whose step is exactly 1 / stride
      cell, and cropped;
    - `centre` = (stride - 1) / 2, a half pixel (a ViT's patch middle, 6.5 at 14 px): bilinear
      align_corners=False samples pixel p at cell (p + 1/2) / stride - 1/2 = (p - centre) / stride,
      clamped at the borders; one replicated cell more covers crops past the last cell's patch.
    """
    hf, wf = head.shape[-2:]
    h, w = size if size is not None else (stride * hf, stride * wf)
    if centre != int(centre) and centre == (stride - 1) / 2:
        padded = F.pad(head, (0, 1, 0, 1), mode="replicate")  # (N, C, Hf + 1, Wf + 1)
        out = (stride * (hf + 1), stride * (wf + 1))
        up = F.interpolate(
            padded, size=out, mode="bilinear", align_corners=False
        )  # (N, C, s Hf + s, s Wf + s)
        y0 = x0 = 0
    else:
        c = int(centre)
        if c != centre or not 0 <= c <= stride:
            raise ValueError(
                f"feature-cell centre {centre} must be a whole pixel in [0, {stride}] or ({stride} - 1) / 2"
            )
        lead = 1 if c > 0 else 0  # a replicated cell before the first when pixels precede its centre
        padded = F.pad(head, (lead, 1, lead, 1), mode="replicate")  # (N, C, Hf + lead + 1, Wf + lead + 1)
        hp, wp = padded.shape[-2:]
        out = (stride * (hp - 1) + 1, stride * (wp - 1) + 1)  # output pixel y samples padded cell y / stride
        up = F.interpolate(padded, size=out, mode="bilinear", align_corners=True)  # (N, C, ~s Hp, ~s Wp)
        y0 = x0 = stride * lead - c
    if y0 + h > up.shape[-2] or x0 + w > up.shape[-1]:
        raise ValueError(f"a {hf} x {wf} cell map at stride {stride} cannot cover a {h} x {w} crop")
    return up[..., y0 : y0 + h, x0 : x0 + w]  # (N, C, H, W)


def build_backbone(arch: str, output_stride: int) -> nn.Module:
    """The random frozen-to-be backbone of `arch`: a ResNet dilated to `output_stride` (its fc
    removed: the teacher never classifies), or a ViT (whose stride is its patch)."""
    if arch in VIT_ARCHITECTURES:
        return build_vit(arch)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"model.image.arch {arch!r} is not one of {sorted(ARCHITECTURES) + sorted(VIT_ARCHITECTURES)}"
        )
    backbone = ARCHITECTURES[arch](dilation_for_output_stride(output_stride))
    backbone.fc = nn.Identity()  # checkpoint fc is dropped by the loader
    return backbone


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
        backbone = build_backbone(arch, output_stride)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.frozen = FrozenModule(backbone.eval())  # not a child: see the module docstring
        self.pads_input = isinstance(backbone, VisionTransformer)  # any crop; else multiples of the stride
        resnet = not self.pads_input  # fold / channels-last are ResNet switches (inference.py)
        self.inference = InferenceCopy(fold_batchnorm and resnet, channels_last and resnet)
        self.grid = feature_grid(backbone)
        expected = teacher_feature_grid(arch, output_stride)
        if self.grid != expected:
            raise ValueError(
                f"the {arch} teacher's feature cells sit at stride {self.grid.stride}, centre "
                f"{self.grid.centre} px; the frustum and depth targets assume stride {expected.stride}, "
                f"centre {expected.centre} (hvdistill/geometry/frustum.py: teacher_feature_grid)"
            )
        self.output_stride = self.grid.stride
        self.head = nn.Conv2d(backbone.out_channels, feature_dim, kernel_size=1)
        mean_t = torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        std_t = torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.compute_dtype = compute_dtype
        self.load_report: LoadReport | None = None  # set when weights come from a file

    @property
    def backbone(self) -> ResNet | VisionTransformer:
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
        """images (N, 3, H, W) in [0, 1]; for a ResNet H and W are multiples of its stride.

        `with_backbone=True` also returns the backbone map in float32 (see the module docstring).
        """
        h, w = images.shape[-2:]
        s = self.grid.stride
        if not self.pads_input and (h % s or w % s):
            raise ValueError(f"image size {h}x{w} is not a multiple of output stride {s}")
        hf, wf = self.grid.cells(h), self.grid.cells(w)  # cells centred inside the crop
        x = (images.float() - self.mean) / self.std  # (N, 3, H, W)
        with autocast_context(images.device.type, self.compute_dtype):
            with torch.no_grad():
                frozen = self.inference.get(self.backbone)  # ResNet: folded, NHWC: same features
                feats = frozen.features(self.inference.input(x))  # (N, C_b, >= Hf, >= Wf)
                feats = feats[
                    ..., :hf, :wf
                ].contiguous()  # (N, C_b, Hf, Wf): a ViT's padding-centred token dropped
            del x
            if not torch.is_autocast_enabled(images.device.type):  # e.g. a float64 head; no copy else
                feats = feats.to(self.head.weight.dtype)
            head = self.head(feats).float()  # (N, D, Hf, Wf)
        backbone = feats.float() if with_backbone else None
        del feats  # the head's autograd keeps what its weight gradient needs
        up = upsample_cells(head, s, self.grid.centre, (h, w))  # (N, D, H, W), cell j at s j + c
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
    "build_backbone",
    "ImageTeacher",
    "TeacherOutput",
    "build_image_teacher",
    "feature_grid",
    "load_teacher_weights",
    "LoadReport",
    "upsample_cells",
]
