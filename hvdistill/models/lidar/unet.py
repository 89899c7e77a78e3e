"""The 3D student backbone: a sparse residual UNet in the MinkUNet34C layout, on spconv.

Layout (channel numbers of the published recipe; every size comes from `LidarModelConfig`):
  stem      stem_convs (1) 3x3x3 submanifold convs + BN + ReLU, in_channels -> stem_channels (32)
            (MinkUNet34C's conv0p1s1 + bn0 + relu; stem_convs=2 adds a second one)   level 0
  encoder   4 stages; stage i = stride-2 conv (kernel 2) + encoder_blocks[i] BasicBlocks,
            channels planes[0..3] = 32, 64, 128, 256                         levels 1..4
  decoder   4 stages; stage i = inverse conv back to level 3 - i (planes[4 + i]),
            concatenation with that level's encoder output (the stem for level 0),
            then decoder_blocks[i] BasicBlocks, channels planes[4..7] = 256, 128, 96, 96
The output lives on the input sites, in the input row order (submanifold convs keep the
sites and their order; each inverse conv restores exactly the sites of the level it returns to),
with planes[7] = 96 channels per voxel. BatchNorm momenta: `bn_momentum` (0.05) for the stem,
strided, transposed and projection norms, `block_bn_momentum` (0.1) inside the residual blocks,
as in the published code (see blocks.py).
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from torch import nn

from hvdistill.config import LidarModelConfig
from hvdistill.models.lidar.blocks import basic_stage, down_conv_bn_relu, subm_conv_bn_relu, up_conv_bn_relu
from hvdistill.models.lidar.sparse import match_conv_algo

NUM_STAGES = 4  # the MinkUNet layout: four encoder and four decoder stages


class SparseUNet(nn.Module):
    """MinkUNet34C-layout sparse UNet: level-0 sparse tensor -> (V, planes[7]) at the same sites."""

    def __init__(self, cfg: LidarModelConfig, algo: spconv.ConvAlgo | None = spconv.ConvAlgo.Native):
        super().__init__()
        planes, stem = list(cfg.planes), cfg.stem_channels
        m, mb = cfg.bn_momentum, cfg.block_bn_momentum
        self.out_channels = planes[7]
        self.stem = spconv.SparseSequential(
            *[
                subm_conv_bn_relu(cfg.in_channels if i == 0 else stem, stem, 0, algo, m)
                for i in range(cfg.stem_convs)
            ]
        )
        # Encoder: channels entering each stage and the skip width kept at each level.
        enc_in = [stem] + planes[:3]
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i in range(NUM_STAGES):
            self.down.append(down_conv_bn_relu(enc_in[i], enc_in[i], i, algo, m))
            self.encoder.append(basic_stage(enc_in[i], planes[i], cfg.encoder_blocks[i], i + 1, algo, m, mb))
        # Decoder stage i returns from level 4 - i to level 3 - i and concatenates its skip.
        skips = [planes[2], planes[1], planes[0], stem]
        dec_in = [planes[3]] + planes[4:7]
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(NUM_STAGES):
            level = NUM_STAGES - 1 - i
            self.up.append(up_conv_bn_relu(dec_in[i], planes[4 + i], level, algo, m))
            self.decoder.append(
                basic_stage(
                    planes[4 + i] + skips[i], planes[4 + i], cfg.decoder_blocks[i], level, algo, m, mb
                )
            )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        """Sparse input (V, in_channels) -> sparse output (V, planes[7]) on the same sites/order.

        The convs run with the algorithm for the input's device (`sparse.match_conv_algo`).
        """
        match_conv_algo(self, x.features.device)
        out = self.stem(x)  # (V, stem)
        skips = [out]
        for down, stage in zip(self.down, self.encoder):
            out = stage(down(out))  # (V_l, planes[l])
            skips.append(out)
        skips.pop()  # the deepest level has no skip
        for up, stage in zip(self.up, self.decoder):
            out = up(out)  # (V_l, planes[4 + i]) on the sites of level l
            skip = skips.pop()
            out = stage(out.replace_feature(torch.cat([out.features, skip.features], dim=1)))
        return out
