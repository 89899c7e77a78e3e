"""The one place that builds spconv sparse tensors, and the choice of spconv's conv algorithm.

`sparse_input` turns the voxel fields of a `Batch` (coords (V, 4) int32 in spconv's
(batch, z, y, x) order, features (V, C), spatial shape [Z, Y, X]) into a
`spconv.SparseConvTensor`. spconv reads index and feature memory as dense row-major buffers
and ignores strides: a transposed view (e.g. from `torch.nonzero`) silently gives wrong
convolutions, so both are made contiguous here.

`conv_algo(device)` picks the convolution algorithm at model construction: spconv's
implicit-GEMM algorithms need CUDA, so CPU models are built with `ConvAlgo.Native` (which
matches a dense conv3d exactly, forward and backward, and is deterministic); on GPU the
algorithm is left to spconv (`None`). spconv stores every weight in the same KRSC layout
(out, kz, ky, kx, in) whatever the algorithm, so state dicts move freely between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch


def conv_algo(device: torch.device | str) -> spconv.ConvAlgo | None:
    """spconv algorithm for convolutions that will run on `device`: Native on CPU, else spconv's."""
    return spconv.ConvAlgo.Native if torch.device(device).type == "cpu" else None


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
