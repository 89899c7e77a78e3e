"""Superpixel / superpoint pooling for the image-plane-view (IPV) loss, by scatter-mean.

A superpixel id is unique per camera and sample (-1 = no superpixel). For every superpixel
hit by at least one point<->pixel pair:
- the superpoint feature is the mean of the 3D features of its paired points;
- the superpixel feature is the mean of the 2D features of its pixels;
SLidR (`pretrain/lightning_trainer.py: loss_superpixels_average`) feeds
these means of unit-length features to the InfoNCE as they are, so their logits are
cos / temperature scaled by both means' norms; that is the default
(`normalize=False`, LossConfig.renormalize_pooled = false). `normalize=True` L2-normalises both
means, making every logit a cosine similarity / temperature whatever the spread of the
features a superpixel averages (an option, not the published recipe).

Sums are accumulated with index_add (points) and scatter_add (pixels, on the (N, C, H*W)
layout of the feature map, so the map is never permuted or copied); there are no Python
loops over superpixels. Accumulation is fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PooledSuperpixels:
    superpoints: torch.Tensor  # (S, C) 3D anchors, row i matches superpixels[i]
    superpixels: torch.Tensor  # (S, C) 2D keys
    ids: torch.Tensor  # (S,) int64 superpixel id of each row, ascending


def _slots(ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Position of each value in the sorted `ids`; len(ids) where it is absent."""
    n = ids.numel()
    if n == 0:
        return torch.zeros_like(values)
    pos = torch.searchsorted(ids, values.contiguous()).clamp(max=n - 1)
    return torch.where(ids[pos] == values, pos, torch.full_like(pos, n))


def _pool_pixels(image_features: torch.Tensor, slots: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(n_slots, C) sum of the pixel features of each slot (slot n_slots = discarded)."""
    n_img, channels = image_features.shape[:2]
    feats = image_features.float().reshape(n_img, channels, -1)  # (N, C, HW), a view if fp32
    index = slots.reshape(n_img, 1, -1).expand(n_img, channels, feats.shape[2])  # (N, C, HW)
    sums = feats.new_zeros(n_img, channels, n_slots + 1)  # (N, C, S + 1)
    sums = sums.scatter_add(2, index, feats)
    return sums.sum(dim=0)[:, :n_slots].t()  # (S, C)


def pool_superpixels(
    point_features: torch.Tensor,
    pair_superpixel: torch.Tensor,
    image_features: torch.Tensor,
    superpixels: torch.Tensor,
    normalize: bool = False,
) -> PooledSuperpixels:
    """Matched superpoint / superpixel features of every superpixel with a paired point.

    point_features (Q, C): the 3D feature of each pair's point; pair_superpixel (Q,) its
    superpixel id (-1 = none); image_features (N_img, C, H, W); superpixels (N_img, H, W) ids
    unique across the batch, -1 = none. Superpixels without any pixel are dropped too.
    """
    valid = pair_superpixel >= 0
    ids = torch.unique(pair_superpixel[valid])  # (S0,) sorted
    n_slots = ids.numel()
    point_slot = torch.searchsorted(ids, pair_superpixel[valid])  # (Q_valid,)
    channels = point_features.shape[1]
    point_sum = point_features.new_zeros(n_slots, channels, dtype=torch.float32)  # (S0, C)
    point_sum = point_sum.index_add(0, point_slot, point_features[valid].float())
    point_count = torch.bincount(point_slot, minlength=n_slots)  # (S0,)

    pixel_slot = _slots(ids, superpixels.reshape(superpixels.shape[0], -1).long())  # (N, HW)
    pixel_sum = _pool_pixels(image_features, pixel_slot, n_slots)  # (S0, C)
    pixel_count = torch.bincount(pixel_slot.reshape(-1), minlength=n_slots + 1)[:n_slots]

    keep = (point_count > 0) & (pixel_count > 0)  # (S0,)
    superpoints = point_sum[keep] / point_count[keep, None]  # (S, C)
    superpixel_feats = pixel_sum[keep] / pixel_count[keep, None]  # (S, C)
    if normalize:
        superpoints = F.normalize(superpoints, dim=1)
        superpixel_feats = F.normalize(superpixel_feats, dim=1)
    return PooledSuperpixels(superpoints, superpixel_feats, ids[keep])
