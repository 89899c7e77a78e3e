"""BEV column pooling and the BEV/IPV heads on small sparse inputs (CPU, Native algorithm)."""

from __future__ import annotations

import pytest
import torch

from hvdistill.models.lidar.heads import BEVHead, IPVHead, pool_columns
from hvdistill.models.lidar.sparse import conv_algo, sparse_input

BEV_SIZE, STRIDE, CHANNELS, DIM = 8, 4, 5, 3
SHAPE = [4, BEV_SIZE * STRIDE, BEV_SIZE * STRIDE]  # Z, Y, X


def random_voxels(seed: int, count: int = 300, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack([torch.randint(0, n, (count,), generator=g) for n in [batch] + SHAPE], 1)
    coords = torch.unique(coords, dim=0)
    coords = coords[torch.randperm(len(coords), generator=g)].int()  # (V, 4) unsorted
    return coords, torch.randn(len(coords), CHANNELS, generator=g)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_pool_columns_matches_a_loop(reduce):
    coords, feats = random_voxels(0)
    iy, ix = coords[:, 2] // STRIDE, coords[:, 3] // STRIDE
    pooled, indices = pool_columns(feats, coords[:, 0], iy, ix, BEV_SIZE, reduce)
    assert indices.dtype == torch.int64
    cells = sorted({(int(b), int(y), int(x)) for b, y, x in zip(coords[:, 0], iy, ix)})
    assert indices.tolist() == [list(c) for c in cells]
    for row, (b, y, x) in enumerate(cells):
        members = feats[(coords[:, 0] == b) & (iy == y) & (ix == x)]
        expected = members.amax(0) if reduce == "max" else members.mean(0)
        torch.testing.assert_close(pooled[row], expected)


@pytest.mark.parametrize("variant", ["strided", "column"])
def test_bev_head_cells_are_the_voxel_columns(variant):
    coords, feats = random_voxels(1)
    head = BEVHead(CHANNELS, DIM, variant, STRIDE, BEV_SIZE, "max", conv_algo("cpu"), 0.05)
    bev, indices = head(sparse_input(coords, feats, SHAPE, 2))
    expected = torch.unique(
        torch.stack([coords[:, 0], coords[:, 2] // STRIDE, coords[:, 3] // STRIDE], 1).long(), dim=0
    )
    assert torch.equal(indices, expected)  # unique, sorted, one per non-empty column
    assert bev.shape == (len(expected), DIM)
    torch.testing.assert_close(bev.norm(dim=1), torch.ones(len(bev)))


def test_strided_head_reduces_x_y_by_the_stride_and_keeps_z():
    coords, feats = random_voxels(2)
    head = BEVHead(CHANNELS, DIM, "strided", STRIDE, BEV_SIZE, "max", conv_algo("cpu"), 0.05)
    out = head.reduce_xy(sparse_input(coords, feats, SHAPE, 2))
    assert out.spatial_shape == [SHAPE[0], BEV_SIZE, BEV_SIZE]
    expected = torch.unique(
        torch.stack([coords[:, 0], coords[:, 1], coords[:, 2] // STRIDE, coords[:, 3] // STRIDE], 1), dim=0
    )
    assert torch.equal(torch.unique(out.indices, dim=0), expected)


def test_bev_head_rejects_bad_settings():
    with pytest.raises(ValueError, match="power-of-two"):
        BEVHead(CHANNELS, DIM, "strided", 3, BEV_SIZE, "max", None, 0.05)
    with pytest.raises(ValueError, match="bev_head"):
        BEVHead(CHANNELS, DIM, "pillars", STRIDE, BEV_SIZE, "max", None, 0.05)
    with pytest.raises(ValueError, match="bev_pool"):
        BEVHead(CHANNELS, DIM, "column", STRIDE, BEV_SIZE, "sum", None, 0.05)


def test_ipv_head_is_unit_norm_per_voxel():
    feats = torch.randn(50, CHANNELS, generator=torch.Generator().manual_seed(3))
    out = IPVHead(CHANNELS, DIM)(feats)
    assert out.shape == (50, DIM)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(50))
