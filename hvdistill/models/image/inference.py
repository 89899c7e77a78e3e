"""The frozen teacher's backbone prepared for inference: BatchNorm folded in, channels-last.

The teacher's backbone never trains and always runs in eval mode, so each BatchNorm after a
convolution is a fixed per-channel affine map that can be folded into that convolution's weight
and bias (w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps), computed in float64):
one pass over each feature map fewer. Channels-last (NHWC) lets oneDNN on CPU and cuDNN on GPU
pick their faster convolution layouts. Both change only the order of floating-point operations:
the features equal the plain backbone's within float32 rounding (tests/models/image/test_inference.py);
docs/benchmarks.md ("The demo on a CPU without native bf16") measures what each pays.

`InferenceCopy` keeps the prepared copy beside the backbone it was made from, which stays the
one that weights load into and `teacher.backbone` returns. The copy is rebuilt whenever any of
the backbone's tensors changed (in place, as a weight load does: its version counter moves; or
replaced, as a device move does: its storage moves), so it can never serve stale weights.
The copy costs one more set of the backbone's weights on its device (ResNet-50: ~94 MB fp32);
with both switches off (`model.image.fold_batchnorm=false channels_last=false`) there is none.
`torch.inference_mode` is not used: the head's weight gradient needs the backbone map as an
autograd input, which an inference-mode tensor cannot be.
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
from torch import nn

from hvdistill.models.image.resnet import ResNet

CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # torchvision's names


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode `bn` (applied after `conv`) into `conv`'s weight and bias, in place."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)  # (C_out, C_in / g, k, k)
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    folded = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    conv.bias = nn.Parameter(folded.to(conv.weight.dtype), requires_grad=False)


def _fold_children(module: nn.Module) -> None:
    """Fold `module`'s own conv/bn pairs (and a [conv, bn] downsample) into its convs."""
    children = dict(module.named_children())
    for conv_name, bn_name in CONV_BN_PAIRS:
        conv, bn = children.get(conv_name), children.get(bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fold_batchnorm(conv, bn)
            setattr(module, bn_name, nn.Identity())
    down = children.get("downsample")
    if isinstance(down, nn.Sequential) and len(down) == 2 and isinstance(down[1], nn.BatchNorm2d):
        fold_batchnorm(down[0], down[1])
        down[1] = nn.Identity()


def prepare_for_inference(backbone: ResNet, fold: bool, channels_last: bool) -> ResNet:
    """An eval-mode copy of `backbone` with its BatchNorms folded (`fold`) and NHWC weights
    (`channels_last`); `backbone` itself is left as it is. Refuses a BatchNorm it cannot fold."""
    prepared = copy.deepcopy(backbone).eval()
    if fold:
        for module in list(prepared.modules()):
            _fold_children(module)
        left = [name for name, m in prepared.named_modules() if isinstance(m, nn.BatchNorm2d)]
        if left:
            raise ValueError(f"teacher BatchNorms not preceded by a convolution: {left[:3]}")
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared


def _state_key(module: nn.Module) -> tuple:
    """What identifies the values of every tensor of `module`: storage, version counter, dtype."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in chain(module.parameters(), module.buffers()))


class InferenceCopy:
    """The prepared copy of one backbone, rebuilt when the backbone's tensors change."""

    def __init__(self, fold: bool, channels_last: bool) -> None:
        self.fold, self.channels_last = fold, channels_last
        self._key: tuple | None = None
        self._module: ResNet | None = None

    @property
    def active(self) -> bool:
        """Whether the teacher runs a prepared copy at all (else the backbone itself)."""
        return self.fold or self.channels_last

    def get(self, backbone: ResNet) -> ResNet:
        """The prepared copy of `backbone` as it is now (the backbone itself when inactive)."""
        if not self.active:
            return backbone
        key = _state_key(backbone)
        if key != self._key or self._module is None:
            self._module = prepare_for_inference(backbone, self.fold, self.channels_last)
            self._key = key
        return self._module

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in the memory format the prepared copy expects."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


__all__ = ["InferenceCopy", "fold_batchnorm", "prepare_for_inference"]
