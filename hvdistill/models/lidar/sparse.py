"""The one place that builds spconv sparse tensors, and the choice of spconv's conv algorithm.

`sparse_input` turns the voxel fields of a `Batch` (coords (V, 4) int32 in spconv's
(batch, z, y, x) order, features (V, C), spatial shape [Z, Y, X]) into a
`spconv.SparseConvTensor`. spconv reads index and feature memory as dense row-major buffers
and ignores strides: a transposed view (e.g. from `torch.nonzero`) silently gives wrong
convolutions, so both are made contiguous here.

The convolution algorithm follows the inputs, not the build: spconv fixes a conv's algorithm
in its `algo` attribute, and its implicit-GEMM algorithms need CUDA, so a model built for one
device broke after `.to(other)` (what DeepSpeed does). `match_conv_algo(module, device)`, called
by the sparse modules at forward time with their input's device, sets every conv under them to
`ConvAlgo.Native` for CPU inputs (matches a dense conv3d exactly, forward and backward, and is
deterministic) and to spconv's own default for CUDA inputs (`MaskImplicitGemm` for kernels of at
most 32 taps, Native above); it walks the modules only when the device type changes.
`conv_algo(device)` is the algorithm convs are constructed with (Native for CPU, spconv's
choice, `None`, otherwise); it is replaced at the first forward. spconv stores every weight in
the same KRSC layout (out, kz, ky, kx, in) whatever the algorithm, so weights and state dicts
move freely between devices.

`spconv.SparseConvTensor` is a torch.fx proxyable class, so building one asks torch whether fx is
tracing, and torch logs once per process a notice meant for code that calls `is_fx_tracing`
itself ("is_fx_tracing will return true for both fx.symbolic_trace and torch.export..."). It
said nothing a user could act on and appeared in every pretraining and fine-tuning process, so
that one message of torch's fx logger is filtered out here (`FX_TRACING_NOTICE`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

IMPLICIT_GEMM_MAX_TAPS = 32  # spconv's own default: implicit GEMM up to 32 kernel taps, Native above
FX_TRACING_NOTICE = "is_fx_tracing will return true"  # start of torch's notice (see the docstring)


class _DropFxTracingNotice(logging.Filter):
    """Drops torch's is_fx_tracing notice that every SparseConvTensor triggers; nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(FX_TRACING_NOTICE)


logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropFxTracingNotice())


def conv_algo(device: torch.device | str) -> spconv.ConvAlgo | None:
    """spconv algorithm to construct convolutions with: Native for CPU, else spconv's (`None`)."""
    return spconv.ConvAlgo.Native if torch.device(device).type == "cpu" else None


def runtime_algo(conv: SparseConvolution, device_type: str) -> spconv.ConvAlgo:
    """The algorithm `conv` runs with on inputs of `device_type`: Native on CPU, spconv's default on CUDA."""
    if device_type == "cpu" or math.prod(conv.kernel_size) > IMPLICIT_GEMM_MAX_TAPS:
        return spconv.ConvAlgo.Native
    return spconv.ConvAlgo.MaskImplicitGemm


def match_conv_algo(module: nn.Module, device: torch.device | str) -> None:
    """Set every spconv conv under `module` to the algorithm for inputs on `device` (see above).

    Convs sharing an indice key get the same algorithm, as spconv requires. Cached per module:
    only a change of device type walks the submodules again.
    """
    kind = torch.device(device).type
    if getattr(module, "_conv_algo_device", None) == kind:
        return
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = runtime_algo(m, kind)
    module._conv_algo_device = kind


def sparse_input(
    voxel_coords: torch.Tensor,
    voxel_features: torch.Tensor,
    spatial_shape: Sequence[int],
    batch_size: int,
) -> spconv.SparseConvTensor:
    """(V, 4) int (batch, z, y, x) coords + (V, C) features on a [Z, Y, X] grid -> sparse tensor."""
    if voxel_coords.ndim != 2 or voxel_coords.shape[1] != 4:
        raise ValueError(f"voxel_coords must be (V, 4) = (batch, z, y, x), got {tuple(voxel_coords.shape)}")
    if voxel_features.ndim != 2 or voxel_features.shape[0] != voxel_coords.shape[0]:
        raise ValueError(
            f"voxel_features must be (V, C) with V = {voxel_coords.shape[0]}, "
            f"got {tuple(voxel_features.shape)}"
        )
    if len(spatial_shape) != 3:
        raise ValueError(f"spatial_shape must be [Z, Y, X], got {list(spatial_shape)}")
    if voxel_coords.device != voxel_features.device:
        raise ValueError(
            f"voxel_coords on {voxel_coords.device} but voxel_features on "
            f"{voxel_features.device}; move both to one device"
        )
    coords = voxel_coords.to(torch.int32).contiguous()  # (V, 4)
    feats = voxel_features.contiguous()  # (V, C)
    return spconv.SparseConvTensor(feats, coords, [int(s) for s in spatial_shape], int(batch_size))
