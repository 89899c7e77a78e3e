"""Sparse BEV pooling equals the materialise-and-index_add reference, forward and backward;
the fast frustum cells equal hvdistill.geometry's float64 frustum_cells."""

import pytest
import torch

from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.frustum import frustum_cells, make_frustum
from hvdistill.models.depth.bev_pool import bev_pool, prepare_pool_index, ray_cells

CROP = (64, 96)  # small crops keep the test fast; all 118 depth bins are kept
Z_RANGE = (-5.0, 3.0)


def geometry_cells(rig: dict, grid: BEVGrid) -> tuple[torch.Tensor, torch.Tensor]:
    frustum = make_frustum(*CROP, 4, 1.0, 60.0, 0.5)
    offset = rig["image_batch"] * grid.num_cells
    fast = ray_cells(
        frustum,
        grid,
        rig["intrinsics"],
        rig["camera_to_lidar"],
        rig["image_aug"],
        rig["lidar_aug"],
        Z_RANGE,
        offset,
    )
    ref = frustum_cells(
        frustum, grid, rig["intrinsics"], rig["camera_to_lidar"], rig["image_aug"], rig["lidar_aug"], Z_RANGE
    )
    ref = torch.where(ref >= 0, ref + offset.view(-1, 1, 1, 1), ref)
    return fast, ref


@pytest.mark.parametrize("seed, augment", [(0, True), (1, True), (2, False)])
def test_ray_cells_equal_float64_frustum_cells(rig, seed, augment):
    grid = BEVGrid()
    fast, ref = geometry_cells(rig(2, CROP, seed, augment), grid)
    assert fast.dtype == torch.int32 and fast.shape == ref.shape == (12, 118, 16, 24)
    assert torch.equal(fast.long(), ref)
    kept = (fast >= 0).float().mean()
    assert 0.2 < kept < 0.9  # a real mix of kept and dropped points
    assert fast[6:][fast[6:] >= 0].min() >= grid.num_cells  # second sample's offset


def naive_pool(depth, context, cells, num_cells):
    """LSS-style: materialise (points x channels), then index_add into the cells."""
    c = context.shape[1]
    lifted = depth.unsqueeze(2) * context.unsqueeze(1)  # (N, D, C, Hf, Wf)
    lifted = lifted.permute(0, 1, 3, 4, 2).reshape(-1, c)  # (N * D * Hf * Wf, C)
    flat = cells.reshape(-1).long()
    keep = flat >= 0
    out = torch.zeros(num_cells, c, dtype=depth.dtype)
    return out.index_add(0, flat[keep], lifted[keep])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_pool_matches_naive_reference_forward_and_backward(rig, dtype, tol):
    grid = BEVGrid(size=64, resolution=1.6)  # coarse grid: many points share a cell
    fast, _ = geometry_cells(rig(2, CROP, 3), grid)
    num_cells = 2 * grid.num_cells
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 118, 16, 24, generator=gen, dtype=dtype)
    depth = logits.softmax(dim=1).requires_grad_()
    context = torch.randn(12, 8, 16, 24, generator=gen, dtype=dtype).requires_grad_()
    grad_out = torch.randn(num_cells, 8, generator=gen, dtype=dtype)

    index = prepare_pool_index(fast, num_cells)
    out = bev_pool(depth, context, index)
    gd, gc = torch.autograd.grad(out, (depth, context), grad_out)
    ref = naive_pool(depth, context, fast, num_cells)
    rd, rc = torch.autograd.grad(ref, (depth, context), grad_out)

    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    torch.testing.assert_close(gd, rd, rtol=0, atol=tol)
    torch.testing.assert_close(gc, rc, rtol=0, atol=tol)
    assert torch.all(gd[fast < 0] == 0)  # dropped points get no gradient
    occupied = torch.zeros(num_cells, dtype=torch.bool)
    occupied[fast[fast >= 0].long()] = True
    assert torch.equal(index.occupied, occupied)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_runs_in_float32_under_an_outer_autocast(rig, dtype):
    """CPU has no bf16 sparse CSR product: bev_pool computes in float32 whatever autocast says,
    and hands gradients back in the inputs' dtype (backward run under autocast too)."""
    grid = BEVGrid(size=64, resolution=1.6)
    fast, _ = geometry_cells(rig(1, CROP, 6), grid)
    index = prepare_pool_index(fast, grid.num_cells)
    gen = torch.Generator().manual_seed(2)
    depth = torch.randn(6, 118, 16, 24, generator=gen).softmax(dim=1).to(dtype).requires_grad_()
    context = torch.randn(6, 8, 16, 24, generator=gen).to(dtype).requires_grad_()
    grad_out = torch.randn(grid.num_cells, 8, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bev_pool(depth, context, index)
        gd, gc = torch.autograd.grad(out, (depth, context), grad_out)
    d32, c32 = depth.detach().float().requires_grad_(), context.detach().float().requires_grad_()
    ref = bev_pool(d32, c32, index)  # no autocast: the float32 path on the same values
    rd, rc = torch.autograd.grad(ref, (d32, c32), grad_out)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert gd.dtype == gc.dtype == dtype
    assert torch.equal(gd, rd.to(dtype)) and torch.equal(gc, rc.to(dtype))


def test_index_accepts_int64_channel_first_cells(rig):
    grid = BEVGrid()
    fast, ref = geometry_cells(rig(1, CROP, 4), grid)
    a = prepare_pool_index(fast, grid.num_cells)
    b = prepare_pool_index(ref.contiguous(), grid.num_cells)  # int64, (N, D, Hf, Wf) layout
    for name in ("kept", "pixel_crow", "pixel_col", "order", "crow", "col"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_shape_mismatch_is_refused(rig):
    grid = BEVGrid()
    fast, _ = geometry_cells(rig(1, CROP, 5), grid)
    index = prepare_pool_index(fast, grid.num_cells)
    with pytest.raises(ValueError, match="do not match"):
        bev_pool(torch.rand(6, 117, 16, 24), torch.rand(6, 8, 16, 24), index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pool_on_cuda_matches_the_cpu_reference(rig):
    """The CSR products go to cuSPARSE on CUDA, which is stricter about duplicate and unsorted
    column indices than the CPU kernels; this is the check to run on the first GPU machine."""
    grid = BEVGrid(size=64, resolution=1.6)
    fast, _ = geometry_cells(rig(2, CROP, 3), grid)
    num_cells = 2 * grid.num_cells
    gen = torch.Generator().manual_seed(1)
    depth = torch.randn(12, 118, 16, 24, generator=gen).softmax(dim=1)
    context = torch.randn(12, 8, 16, 24, generator=gen)
    grad_out = torch.randn(num_cells, 8, generator=gen)
    ref = naive_pool(depth.requires_grad_(), context.requires_grad_(), fast, num_cells)
    rd, rc = torch.autograd.grad(ref, (depth, context), grad_out)
    d_gpu = depth.detach().cuda().requires_grad_()
    c_gpu = context.detach().cuda().requires_grad_()
    out = bev_pool(d_gpu, c_gpu, prepare_pool_index(fast.cuda(), num_cells))
    gd, gc = torch.autograd.grad(out, (d_gpu, c_gpu), grad_out.cuda())
    for got, want in ((out, ref), (gd, rd), (gc, rc)):
        torch.testing.assert_close(got.cpu(), want.detach(), rtol=0, atol=1e-4)
