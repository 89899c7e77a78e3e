"""spconv on CPU (Native algorithm) against dense torch conv3d, and `sparse_input`.

spconv weights are KRSC: (out, kz, ky, kx, in) -> dense (out, in, kz, ky, kx) by
permute(0, 4, 1, 2, 3).
Submanifold convs only output at the active input sites; the stride-2 conv outputs at
unique(site // 2); the inverse conv returns to the sites of the conv it inverts. Forward and
backward (feature and weight gradients) are compared in float64.
"""

from __future__ import annotations

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F

from hvdistill.models.lidar.sparse import conv_algo, sparse_input

NATIVE = spconv.ConvAlgo.Native
SHAPE = [6, 8, 10]  # Z, Y, X (even: the inverse of a stride-2 conv restores the full size)
BATCH, C_IN, C_OUT = 2, 3, 4
TOL = dict(rtol=1e-9, atol=1e-10)


def random_sites(seed: int, density: float = 0.25) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(BATCH, *SHAPE, generator=g) < density
    return mask.nonzero().int().contiguous()  # (V, 4) batch, z, y, x


def to_dense(feats: torch.Tensor, sites: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """(V, C) features at (V, 4) sites -> (B, C, Z, Y, X) dense tensor (differentiable)."""
    dense = feats.new_zeros(BATCH, *shape, feats.shape[1])
    s = sites.long()
    dense = dense.index_put((s[:, 0], s[:, 1], s[:, 2], s[:, 3]), feats)
    return dense.permute(0, 4, 1, 2, 3)


def at_sites(dense: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, Y, X) -> (V, C) rows at (V, 4) sites."""
    s = sites.long()
    return dense.permute(0, 2, 3, 4, 1)[s[:, 0], s[:, 1], s[:, 2], s[:, 3]]


def dense_weight(conv: torch.nn.Module) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)  # KRSC -> (out, in, kz, ky, kx)


def leaf(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def grads(out: torch.Tensor, upstream: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * upstream).sum(), inputs)


def test_submanifold_conv_matches_dense_conv3d_forward_and_backward():
    sites = random_sites(0)
    conv = spconv.SubMConv3d(C_IN, C_OUT, 3, padding=1, bias=True, algo=NATIVE).double()
    torch.nn.init.normal_(conv.bias)
    feats = leaf((len(sites), C_IN), 1)
    out = conv(sparse_input(sites, feats, SHAPE, BATCH))
    assert torch.equal(out.indices, sites)  # same sites, same order
    dense_out = F.conv3d(to_dense(feats, sites, SHAPE), dense_weight(conv), conv.bias, padding=1)
    ref = at_sites(dense_out, sites)
    torch.testing.assert_close(out.features, ref, **TOL)
    upstream = leaf(tuple(ref.shape), 2).detach()
    g_sparse = grads(out.features, upstream, feats, conv.weight, conv.bias)
    g_dense = grads(ref, upstream, feats, conv.weight, conv.bias)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b, **TOL)


def strided_pair(seed: int):
    """A stride-2 kernel-2 conv and its inverse sharing an indice key, in float64."""
    down = spconv.SparseConv3d(C_IN, C_OUT, 2, stride=2, bias=False, indice_key="d", algo=NATIVE)
    up = spconv.SparseInverseConv3d(C_OUT, C_IN, 2, indice_key="d", bias=False, algo=NATIVE)
    torch.manual_seed(seed)
    for conv in (down, up):
        torch.nn.init.normal_(conv.weight)
    return down.double(), up.double()


def test_strided_conv_matches_dense_conv3d_forward_and_backward():
    sites = random_sites(3)
    down, _ = strided_pair(4)
    feats = leaf((len(sites), C_IN), 5)
    out = down(sparse_input(sites, feats, SHAPE, BATCH))
    half = [s // 2 for s in SHAPE]
    assert out.spatial_shape == half
    expected_sites = torch.unique(torch.cat([sites[:, :1], sites[:, 1:] // 2], 1), dim=0)
    got_sites = torch.unique(out.indices, dim=0)
    assert torch.equal(got_sites, expected_sites)
    assert len(out.indices) == len(expected_sites)  # no duplicate outputs
    dense_out = F.conv3d(to_dense(feats, sites, SHAPE), dense_weight(down), stride=2)
    ref = at_sites(dense_out, out.indices)
    torch.testing.assert_close(out.features, ref, **TOL)
    upstream = leaf(tuple(ref.shape), 6).detach()
    for a, b in zip(
        grads(out.features, upstream, feats, down.weight), grads(ref, upstream, feats, down.weight)
    ):
        torch.testing.assert_close(a, b, **TOL)


def test_inverse_conv_matches_dense_transposed_conv_forward_and_backward():
    sites = random_sites(7)
    down, up = strided_pair(8)
    coarse = down(sparse_input(sites, leaf((len(sites), C_IN), 9).detach(), SHAPE, BATCH))
    coarse_feats = leaf(tuple(coarse.features.shape), 10)
    out = up(coarse.replace_feature(coarse_feats))
    assert torch.equal(out.indices, sites)  # back to the fine sites, in their order
    assert out.spatial_shape == SHAPE
    half = [s // 2 for s in SHAPE]
    weight = up.weight.permute(4, 0, 1, 2, 3)  # KRSC -> transposed-conv (in, out, kz, ky, kx)
    dense_out = F.conv_transpose3d(to_dense(coarse_feats, coarse.indices, half), weight, stride=2)
    ref = at_sites(dense_out, sites)
    torch.testing.assert_close(out.features, ref, **TOL)
    upstream = leaf(tuple(ref.shape), 11).detach()
    for a, b in zip(
        grads(out.features, upstream, coarse_feats, up.weight), grads(ref, upstream, coarse_feats, up.weight)
    ):
        torch.testing.assert_close(a, b, **TOL)


def test_sparse_input_makes_strided_views_safe():
    """`nonzero()` returns a column-major view; spconv would read it as garbage."""
    g = torch.Generator().manual_seed(12)
    sites = (torch.rand(BATCH, *SHAPE, generator=g) < 0.25).nonzero().int()
    assert not sites.is_contiguous()
    conv = spconv.SubMConv3d(1, 1, 3, padding=1, bias=False, algo=NATIVE).double()
    feats = leaf((len(sites), 1), 13).detach()
    via_view = conv(sparse_input(sites, feats, SHAPE, BATCH)).features
    ref = at_sites(F.conv3d(to_dense(feats, sites, SHAPE), dense_weight(conv), padding=1), sites)
    torch.testing.assert_close(via_view, ref, **TOL)


def test_sparse_input_rejects_malformed_inputs():
    sites = random_sites(14)
    feats = torch.zeros(len(sites), 1)
    with pytest.raises(ValueError, match="voxel_coords"):
        sparse_input(sites[:, :3], feats, SHAPE, BATCH)
    with pytest.raises(ValueError, match="voxel_features"):
        sparse_input(sites, feats[:-1], SHAPE, BATCH)
    with pytest.raises(ValueError, match="spatial_shape"):
        sparse_input(sites, feats, SHAPE[:2], BATCH)
    x = sparse_input(sites.long(), feats, SHAPE, BATCH)
    assert x.indices.dtype == torch.int32 and x.spatial_shape == SHAPE and x.batch_size == BATCH


def test_conv_algo_is_native_on_cpu_only():
    assert conv_algo("cpu") == NATIVE
    assert conv_algo(torch.device("cpu")) == NATIVE
    assert conv_algo("cuda") is None


def test_torchs_fx_tracing_notice_is_dropped_and_other_fx_warnings_are_not(caplog):
    import torch.fx._symbolic_trace as fx_trace

    with caplog.at_level("WARNING", logger="torch.fx._symbolic_trace"):
        fx_trace.is_fx_tracing_warning.__wrapped__()  # what building a SparseConvTensor logs once
        fx_trace.log.warning("another fx warning")
    assert [r.getMessage() for r in caplog.records] == ["another fx warning"]
