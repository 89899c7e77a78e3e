"""BEV loss: the positive of each LiDAR cell is the image BEV cell under it; subsampling."""

import pytest
import torch
import torch.nn.functional as F

from hvdistill.losses.bev import bev_keys, bev_loss, flat_cell_index, subsample_anchors
from hvdistill.losses.infonce import InfoNCE, infonce_sum

B, C, S = 2, 8, 6
TAU = 0.07


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image_bev = F.normalize(torch.randn(B, C, S, S, generator=g), dim=1)
    cells = torch.randperm(B * S * S, generator=g)[:20]  # distinct non-empty cells
    indices = torch.stack([cells // (S * S), (cells % (S * S)) // S, cells % S], dim=1)
    return image_bev, indices


def test_keys_are_the_image_cells_under_the_anchors():
    image_bev, indices = _case()
    expected = torch.stack([image_bev[b, :, iy, ix] for b, iy, ix in indices.tolist()])
    flat = flat_cell_index(indices, S)
    torch.testing.assert_close(bev_keys(image_bev, flat, S), expected)
    table = image_bev.permute(0, 2, 3, 1).reshape(B * S * S, C)  # flat (B * S * S, C) form
    torch.testing.assert_close(bev_keys(table, flat_cell_index(flat, S), S), expected)
    with pytest.raises(ValueError, match="expected"):
        bev_keys(image_bev[..., :-1], flat, S)


def test_loss_uses_the_right_positives():
    image_bev, indices = _case(1)
    contrast = InfoNCE(TAU, tile_size=7, gather=True, queue_size=0, dim=C)
    keys = torch.stack([image_bev[b, :, iy, ix] for b, iy, ix in indices.tolist()])
    aligned = bev_loss(keys.clone(), indices, image_bev, contrast, S).loss  # anchor == its key
    shifted = bev_loss(keys.roll(1, 0), indices, image_bev, contrast, S).loss  # wrong cells
    assert float(aligned) < 0.5 < 5.0 < float(shifted)
    lidar = F.normalize(torch.randn(len(indices), C, generator=torch.Generator().manual_seed(3)), dim=1)
    got = bev_loss(lidar, indices, image_bev, contrast, S)
    expected = infonce_sum(lidar, keys, torch.arange(len(indices)), TAU, 0, None, len(indices))
    torch.testing.assert_close(got.loss, expected)
    assert got.num_anchors == len(indices)


def test_subsampling_is_per_sample_and_reproducible():
    sample = torch.tensor([0] * 7 + [1] * 2 + [3] * 5)
    keep_a = subsample_anchors(sample, 3, torch.Generator().manual_seed(5))
    keep_b = subsample_anchors(sample, 3, torch.Generator().manual_seed(5))
    keep_c = subsample_anchors(sample, 3, torch.Generator().manual_seed(6))
    assert keep_a.tolist() == keep_b.tolist() and keep_a.tolist() == sorted(keep_a.tolist())
    assert torch.bincount(sample[keep_a]).tolist() == [3, 2, 0, 3]
    seeds = {tuple(subsample_anchors(sample, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(seeds) > 1 and keep_c.numel() == 8
    assert subsample_anchors(sample, 0).tolist() == list(range(len(sample)))


def test_subsampled_loss_only_contrasts_kept_anchors():
    image_bev, indices = _case(2)
    lidar = F.normalize(torch.randn(len(indices), C, generator=torch.Generator().manual_seed(4)), dim=1)
    contrast = InfoNCE(TAU, tile_size=0, gather=True, queue_size=0, dim=C)
    got = bev_loss(lidar, indices, image_bev, contrast, S, 4, torch.Generator().manual_seed(0))
    keep = subsample_anchors(indices[:, 0], 4, torch.Generator().manual_seed(0))
    keys = bev_keys(image_bev, flat_cell_index(indices, S)[keep], S)
    expected = infonce_sum(lidar[keep], keys, torch.arange(len(keep)), TAU, 0, None, len(keep))
    assert got.num_anchors == len(keep) == 8
    torch.testing.assert_close(got.loss, expected)


def test_anchors_over_cells_the_cameras_never_reached_are_dropped():
    image_bev, indices = _case(5)
    flat = flat_cell_index(indices, S)
    occupied = torch.zeros(B * S * S, dtype=torch.bool)
    occupied[flat[::2]] = True  # the lift reached every other anchor's cell
    table = image_bev.permute(0, 2, 3, 1).reshape(B * S * S, C).clone()
    table[~occupied] = 0.0  # what the lift leaves in cells no frustum point reached
    lidar = F.normalize(torch.randn(len(indices), C, generator=torch.Generator().manual_seed(6)), dim=1)
    contrast = InfoNCE(TAU, tile_size=0, gather=False, queue_size=0, dim=C)
    result = bev_loss(lidar, indices, table, contrast, S, image_occupied=occupied)
    assert result.num_anchors == len(flat[::2])
    expected = infonce_sum(
        lidar[::2], table[flat[::2]], torch.arange(len(flat[::2])), TAU, 0, None, len(flat[::2])
    )
    torch.testing.assert_close(result.loss, expected)
    unmasked = bev_loss(lidar, indices, table, contrast, S)
    assert unmasked.num_anchors == len(flat) and not torch.allclose(unmasked.loss, result.loss)
