"""The student follows its inputs' device and stays fp32 under an outer autocast; backbone export.

No device is captured at build time: spconv's conv algorithm is set from the input's device at
forward (`sparse.match_conv_algo`), so `.to(device)` (what DeepSpeed does) works at any time.
"""

from __future__ import annotations

import copy
import io

import pytest
import spconv.pytorch as spconv
import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from hvdistill.models.lidar import sparse_input
from tests.models.lidar.test_student import build, tiny_config, voxel_batch

GPU_ALGO = spconv.ConvAlgo.MaskImplicitGemm


def algos(model: nn.Module) -> set:
    return {m.algo for m in model.modules() if isinstance(m, SparseConvolution)}


def assert_same(a, b, **tol) -> None:
    assert torch.equal(a.bev_indices, b.bev_indices)
    for x, y in zip((a.voxel_features, a.ipv, a.bev), (b.voxel_features, b.ipv, b.bev)):
        torch.testing.assert_close(x, y, **tol)


def test_a_model_carrying_gpu_algorithms_runs_on_cpu_after_to():
    """A student whose convs hold the CUDA algorithm (as a GPU-built one did) runs after .to('cpu')."""
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=5, n=400)
    model = build(cfg).eval()
    with torch.no_grad():
        ref = model(coords, feats, shape, batch)
    gpu_like = copy.deepcopy(model)
    for m in gpu_like.modules():
        if isinstance(m, SparseConvolution):
            m.algo = GPU_ALGO
    gpu_like._conv_algo_device = None
    for module in (gpu_like.backbone, gpu_like.bev_head.reduce_xy):
        module._conv_algo_device = "cuda"  # what a forward on CUDA inputs leaves behind
    for target in ("cpu", torch.device("cpu")):
        moved = gpu_like.to(target)
        with torch.no_grad():
            out = moved(coords, feats, shape, batch)
        assert algos(moved) == {spconv.ConvAlgo.Native}
        assert_same(out, ref, rtol=0, atol=0)


def test_meta_round_trip_then_load_gives_the_same_model():
    """Built on CPU, moved to meta and materialised again on CPU: weights and forward are the same."""
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=6, n=400)
    model = build(cfg).eval()
    state = copy.deepcopy(model.state_dict())
    moved = copy.deepcopy(model).to("meta")
    assert all(p.device.type == "meta" for p in moved.parameters())
    restored = moved.to_empty(device="cpu")
    restored.load_state_dict(state)
    with torch.no_grad():
        assert_same(restored.eval()(coords, feats, shape, batch), model(coords, feats, shape, batch))


def test_sparse_side_stays_float32_under_an_outer_bf16_autocast():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=7, n=400)
    model = build(cfg)
    ref = model(coords, feats, shape, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(coords, feats.to(torch.bfloat16), shape, batch)
        loss = out.ipv[:, 0].sum() + out.bev[:, 1].sum()
    loss.backward()  # outside autocast, as PyTorch requires (spconv's backward has no bf16)
    for t in (out.voxel_features, out.ipv, out.bev):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # the bf16 input rounds the intensities; nothing else in the student is bf16
    ref_bf16_input = model(coords, feats.to(torch.bfloat16).float(), shape, batch)
    assert_same(out, ref_bf16_input, rtol=0, atol=0)
    assert ref.ipv.shape == out.ipv.shape
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_a_student_cast_to_bf16_is_refused_with_the_fix():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=8, n=200)
    model = build(cfg).to(torch.bfloat16)
    with pytest.raises(TypeError, match="autocast instead"):
        model(coords, feats, shape, batch)


def test_backbone_state_dict_round_trips_and_loading_is_strict():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=9, n=400)
    model, other = build(cfg, seed=0).eval(), build(cfg, seed=1).eval()
    state = model.backbone_state_dict()
    assert state.keys() == model.backbone.state_dict().keys()
    assert not any(k.startswith(("ipv_head", "bev_head")) for k in state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert other.load_backbone_state_dict(torch.load(buf, weights_only=True)) == []
    with torch.no_grad():
        a = model.backbone(sparse_input(coords, feats, shape, batch)).features
        b = other.backbone(sparse_input(coords, feats, shape, batch)).features
    assert torch.equal(a, b)
    broken = dict(state)
    first = next(iter(broken))
    del broken[first]
    broken["head.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing .*1 unexpected \(head\.extra\)"):
        other.load_backbone_state_dict(broken)
    assert other.load_backbone_state_dict(broken, strict=False) == [first]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_built_on_cpu_moved_to_cuda_and_back():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=10)
    model = build(cfg).eval()
    with torch.no_grad():
        ref = model(coords, feats, shape, batch)
        on_gpu = model.to(torch.device("cuda"))
        out = on_gpu(coords.cuda(), feats.cuda(), shape, batch)
        assert algos(on_gpu) == {GPU_ALGO}
        back = on_gpu.cpu()(coords, feats, shape, batch)
    assert algos(model) == {spconv.ConvAlgo.Native}
    assert torch.equal(out.bev_indices.cpu(), ref.bev_indices)
    torch.testing.assert_close(out.ipv.cpu(), ref.ipv, atol=1e-3, rtol=1e-3)
    assert_same(back, ref, rtol=0, atol=0)
