"""The bird's-eye-view loss: each non-empty LiDAR BEV cell against the image BEV cell under it.

Anchors are the LiDAR BEV features (K, C) at cells (K, 3) = (sample, iy, ix), or flat cell
indices (K,) = sample * S * S + iy * S + ix with S = GeometryConfig.bev_size (row-major over
(Y, X), the same flat index as hvdistill/geometry/bev.py with the sample in front). The key
of an anchor is the image BEV feature of the same sample and cell, read from either
- the dense map (B, C, S, S), indexed in place (no permute/copy of the map), or
- a flat table (B * S * S, C), indexed with the flat cell indices;
both give the same keys. Negatives are the keys of the other anchors (and, with gathering,
those of other ranks' anchors, and the queue), through the same InfoNCE as the IPV loss.
Anchors are assumed to sit in distinct cells (one anchor per cell, as the BEV heads produce).
With `image_occupied` (a (B * S * S,) or (B, S, S) bool mask of cells that at least one
frustum point reached), anchors over cells the cameras never see are dropped first: their
image key is a zero vector, which would be both a meaningless positive and a pile of identical
negatives (with one camera, as in SemanticKITTI, that would be most anchors).

Optional subsampling (LossConfig.max_bev_anchors > 0) keeps at most that many anchors per
sample, chosen uniformly at random from a torch.Generator, hence reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hvdistill.losses.infonce import InfoNCE


@dataclass
class BEVLossResult:
    loss: torch.Tensor  # scalar, this rank's share (global normalisation)
    num_anchors: int  # anchors on this rank after subsampling


def flat_cell_index(indices: torch.Tensor, bev_size: int) -> torch.Tensor:
    """(K,) int64 flat index sample * S * S + iy * S + ix of (K, 3) (sample, iy, ix) or (K,)."""
    if indices.dim() == 1:
        return indices.long()
    idx = indices.long()
    return (idx[:, 0] * bev_size + idx[:, 1]) * bev_size + idx[:, 2]


def bev_keys(image_bev: torch.Tensor, flat_index: torch.Tensor, bev_size: int) -> torch.Tensor:
    """(K, C) image BEV features at the flat cells, from (B, C, S, S) or (B * S * S, C)."""
    if image_bev.dim() == 2:
        return image_bev[flat_index]
    if image_bev.dim() != 4 or image_bev.shape[-1] != bev_size or image_bev.shape[-2] != bev_size:
        raise ValueError(
            f"image BEV of shape {tuple(image_bev.shape)}: expected (B, C, "
            f"{bev_size}, {bev_size}) or a flat (B * {bev_size}^2, C) table"
        )
    cells = bev_size * bev_size
    sample, rem = flat_index // cells, flat_index % cells
    return image_bev[sample, :, rem // bev_size, rem % bev_size]  # (K, C)


def subsample_anchors(
    sample: torch.Tensor, max_per_sample: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(K',) ascending indices keeping at most `max_per_sample` anchors of each sample, at random.

    sample (K,) int64 sample of each anchor. Vectorised: anchors are ordered by (sample, random
    key) and the first `max_per_sample` of each sample are kept.
    """
    k = sample.numel()
    if max_per_sample <= 0 or k == 0:
        return torch.arange(k, device=sample.device)
    noise = torch.rand(k, generator=generator, dtype=torch.float64).to(sample.device)  # (K,)
    order = torch.argsort(sample.double() + noise)  # by sample, then random
    sorted_sample = sample[order]
    counts = torch.bincount(sorted_sample)
    starts = torch.cumsum(counts, 0) - counts  # first position of each sample
    rank_in_sample = torch.arange(k, device=sample.device) - starts[sorted_sample]
    return torch.sort(order[rank_in_sample < max_per_sample]).values


def bev_pairs(
    lidar_features: torch.Tensor,
    lidar_indices: torch.Tensor,
    image_bev: torch.Tensor,
    bev_size: int,
    max_anchors_per_sample: int = 0,
    generator: torch.Generator | None = None,
    image_occupied: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K', C) anchors and (K', C) their image keys: cells the cameras saw, subsampled."""
    flat = flat_cell_index(lidar_indices, bev_size)  # (K,)
    if image_occupied is not None:
        seen = image_occupied.reshape(-1)[flat]  # (K,) bool
        flat, lidar_features = flat[seen], lidar_features[seen]
    if max_anchors_per_sample > 0:
        keep = subsample_anchors(flat // (bev_size * bev_size), max_anchors_per_sample, generator)
        flat, lidar_features = flat[keep], lidar_features[keep]
    return lidar_features, bev_keys(image_bev, flat, bev_size)  # (K', C), (K', C)


def bev_loss(
    lidar_features: torch.Tensor,
    lidar_indices: torch.Tensor,
    image_bev: torch.Tensor,
    contrast: InfoNCE,
    bev_size: int,
    max_anchors_per_sample: int = 0,
    generator: torch.Generator | None = None,
    image_occupied: torch.Tensor | None = None,
    sizes: list[int] | None = None,
) -> BEVLossResult:
    """InfoNCE of LiDAR BEV cells (K, C) against the image BEV features at the same cells.

    `sizes`: every rank's anchor count after `bev_pairs`, when the caller exchanged them already.
    """
    anchors, keys = bev_pairs(
        lidar_features, lidar_indices, image_bev, bev_size, max_anchors_per_sample, generator, image_occupied
    )
    return BEVLossResult(contrast(anchors, keys, sizes).loss, int(anchors.shape[0]))
