"""Sparse building blocks of the LiDAR UNet: conv + BatchNorm + ReLU units and the BasicBlock.

Every unit here maps a `spconv.SparseConvTensor` to a `spconv.SparseConvTensor` (spconv's
`SparseSequential` hands non-spconv modules the (N, C) feature rows, so norms and ReLUs are
plain torch modules; `BasicBlock` is a `SparseModule` so it receives the whole tensor). Norms are
plain `nn.BatchNorm1d` over the (N, C) feature rows, so `nn.SyncBatchNorm.convert_sync_batchnorm`
applied from outside turns them into synchronised norms. Convolutions followed by a norm carry
no bias. `algo` is spconv's convolution algorithm (see `sparse.conv_algo`).

BatchNorm momentum (torch's meaning, which MinkowskiEngine's BatchNorm shares: running =
(1 - m) running + m batch) is passed in from `LidarModelConfig`: the published MinkUNet34C
(SLidR's res16unet.py) gives its stem, strided, transposed and residual-projection norms
`bn_momentum` = 0.05 but the two norms inside each residual block torch's default 0.1 (its
`_make_layer` does not hand `bn_momentum` to the blocks): `momentum` and `block_momentum` here.

Indice keys: submanifold convs at one resolution level share the key "subm{level}" (their
neighbour tables are built once per forward); the stride-2 conv leaving level `l` uses
"down{l}", which the matching inverse conv of the decoder reuses to return exactly to the
sites (and the row order) of level `l`.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from torch import nn


def subm_key(level: int) -> str:
    return f"subm{level}"


def down_key(level: int) -> str:
    return f"down{level}"


def norm_relu(channels: int, momentum: float) -> list[nn.Module]:
    """BatchNorm1d + ReLU; inside a SparseSequential they act on the (N, C) feature rows."""
    return [nn.BatchNorm1d(channels, momentum=momentum), nn.ReLU()]


def subm_conv_bn_relu(c_in: int, c_out: int, level: int, algo, momentum: float) -> spconv.SparseSequential:
    """3x3x3 submanifold conv (outputs only at the input sites) + BN + ReLU."""
    return spconv.SparseSequential(
        spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=subm_key(level), algo=algo),
        *norm_relu(c_out, momentum),
    )


def down_conv_bn_relu(c_in: int, c_out: int, level: int, algo, momentum: float) -> spconv.SparseSequential:
    """Stride-2 sparse conv (kernel 2): level `level` -> `level + 1`, + BN + ReLU."""
    return spconv.SparseSequential(
        spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=down_key(level), algo=algo),
        *norm_relu(c_out, momentum),
    )


def up_conv_bn_relu(c_in: int, c_out: int, level: int, algo, momentum: float) -> spconv.SparseSequential:
    """Inverse of the stride-2 conv that left `level`: back to its sites, + BN + ReLU."""
    return spconv.SparseSequential(
        spconv.SparseInverseConv3d(c_in, c_out, 2, indice_key=down_key(level), bias=False, algo=algo),
        *norm_relu(c_out, momentum),
    )


class BasicBlock(spconv.SparseModule):
    """ResNet basic block on sparse tensors: two 3x3x3 submanifold convs and a residual.

    The residual is projected by a bias-free linear map (a 1x1x1 conv) + BN when the
    channel count changes, as in MinkUNet. `block_momentum` is the momentum of norm1 / norm2,
    `momentum` that of the projection's norm (see the module docstring).
    """

    def __init__(self, c_in: int, c_out: int, level: int, algo, momentum: float, block_momentum: float):
        super().__init__()
        key = subm_key(level)
        self.conv1 = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=key, algo=algo)
        self.norm1 = nn.BatchNorm1d(c_out, momentum=block_momentum)
        self.conv2 = spconv.SubMConv3d(c_out, c_out, 3, padding=1, bias=False, indice_key=key, algo=algo)
        self.norm2 = nn.BatchNorm1d(c_out, momentum=block_momentum)
        self.project = None
        if c_in != c_out:
            self.project = nn.Sequential(
                nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out, momentum=momentum)
            )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.project is None else self.project(x.features)  # (N, C_out)
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.norm1(out.features)))  # (N, C_out)
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.norm2(out.features) + identity))


def basic_stage(
    c_in: int, c_out: int, blocks: int, level: int, algo, momentum: float, block_momentum: float
) -> spconv.SparseSequential:
    """`blocks` BasicBlocks at one level; the first maps c_in -> c_out."""
    layers = [
        BasicBlock(c_in if i == 0 else c_out, c_out, level, algo, momentum, block_momentum)
        for i in range(blocks)
    ]
    return spconv.SparseSequential(*layers)
