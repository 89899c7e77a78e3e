"""The distiller as an engine sees it: no teacher in parameters / buffers / state_dict, device
moves that still carry the teacher, autocast around the whole forward, the backbone export and
SyncBatchNorm conversion."""

from __future__ import annotations

import io
import os
import socket

import pytest
import torch
from torch import nn

from hvdistill.losses.total import build_hybrid_view_loss
from hvdistill.models.distiller import build_distiller, convert_sync_batchnorm
from hvdistill.models.lidar import build_lidar_model
from tests.models.test_distiller import tiny_batch, tiny_config


def frozen_ids(model) -> set[int]:
    backbone = model.teacher.backbone
    return {id(t) for t in [*backbone.parameters(), *backbone.buffers()]}


def test_teacher_backbone_is_invisible_to_the_engine():
    model = build_distiller(tiny_config())
    frozen = frozen_ids(model)
    assert len(frozen) > 100  # ResNet-18 weights and BN statistics
    assert not frozen & {id(p) for p in model.parameters()}
    assert not frozen & {id(p) for _, p in model.named_parameters()}
    assert not frozen & {id(b) for b in model.buffers()}
    assert model.teacher.backbone not in list(model.modules())
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.startswith("teacher.") and not k.startswith("teacher.head.")]
    assert {"teacher.head.weight", "teacher.head.bias"} <= set(keys)
    assert all(p.requires_grad for p in model.parameters())  # only trainable parameters remain
    assert not any(p.requires_grad for p in model.frozen_parameters())


def test_device_moves_carry_the_teacher_and_dtype_casts_do_not():
    model = build_distiller(tiny_config())
    same = model.to(torch.device("cpu"))
    assert same is model and all(p.device.type == "cpu" for p in model.frozen_parameters())
    model.double()
    assert model.teacher.head.weight.dtype == torch.float64
    assert all(t.dtype == torch.float32 for t in model.teacher.backbone.parameters())
    model.to(torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in model.teacher.backbone.parameters())
    model.float().to("meta")
    assert all(p.device.type == "meta" for p in [*model.parameters(), *model.frozen_parameters()])
    assert all(b.device.type == "meta" for b in model.teacher.backbone.buffers())
    model.to_empty(device="cpu")
    assert all(p.device.type == "cpu" for p in [*model.parameters(), *model.frozen_parameters()])


def test_train_keeps_the_teacher_backbone_in_eval_mode():
    model = build_distiller(tiny_config())
    model.eval().train()
    assert model.student.training and model.teacher.head.training
    assert not any(m.training for m in model.teacher.backbone.modules())


def test_random_teacher_is_the_same_whatever_the_global_seed():
    """The backbone is never broadcast by an engine, so every rank must build the same one."""
    cfg = tiny_config()
    torch.manual_seed(0)
    a = build_distiller(cfg)
    torch.manual_seed(1)
    b = build_distiller(cfg)
    for (name, x), y in zip(
        a.teacher.backbone.state_dict().items(), b.teacher.backbone.state_dict().values()
    ):
        assert torch.equal(x, y), name
    cfg.model.image.random_init_seed = 1
    c = build_distiller(cfg)
    assert not torch.equal(c.teacher.backbone.conv1.weight, a.teacher.backbone.conv1.weight)


def test_state_dict_round_trip_through_weights_only_load():
    """Strict both ways: the checkpoint holds every trainable key and nothing of the teacher backbone."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_distiller(cfg)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = build_distiller(cfg)
    other.load_state_dict(torch.load(buf, weights_only=True))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_forward_backward_under_the_loops_bf16_autocast():
    """The loop wraps forward + loss in bf16 autocast and calls backward outside it."""
    torch.manual_seed(0)
    cfg = tiny_config()
    batch = tiny_batch(cfg)
    model, loss_fn = build_distiller(cfg).train(), build_hybrid_view_loss(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = model(batch)
        terms = loss_fn(inputs, epoch=0)
    for name in ("total", "ipv", "depth", "bev"):
        value = getattr(terms, name)
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert terms.bev > 0 and terms.num_bev_anchors > 10
    assert inputs.pair_point_features.dtype == inputs.image_bev.dtype == torch.float32
    terms.total.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"trainable parameters without a finite gradient: {bad}"
    assert all(p.grad.dtype == p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_built_model_moved_to_cuda_trains_under_bf16_autocast():
    torch.manual_seed(0)
    cfg = tiny_config("dist.use_gpu=true")
    batch = tiny_batch(cfg).to("cuda")
    model = build_distiller(cfg).to("cuda").train()  # built on CPU, moved as an engine does
    loss_fn = build_hybrid_view_loss(cfg).cuda()
    assert all(p.is_cuda for p in [*model.parameters(), *model.frozen_parameters()])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = loss_fn(model(batch), epoch=0)
    terms.total.backward()
    assert all(torch.isfinite(getattr(terms, n)) for n in ("total", "ipv", "depth", "bev"))
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad and all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_teacher_output_no_longer_holds_the_backbone_map():
    cfg = tiny_config()
    model = build_distiller(cfg)
    out = model.teacher(torch.rand(2, 3, 64, 128))
    assert out.backbone is None and out.head.shape == (2, cfg.model.feature_dim, 16, 32)


def test_backbone_export_is_the_student_backbone_only():
    cfg = tiny_config()
    model = build_distiller(cfg)
    state = model.backbone_state_dict()
    assert state.keys() == model.student.backbone.state_dict().keys()
    assert all(type(v) is torch.Tensor and not v.requires_grad for v in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    downstream = build_lidar_model(cfg.model, cfg.geometry)
    assert downstream.load_backbone_state_dict(torch.load(buf, weights_only=True)) == []
    for k, v in downstream.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k


def norm_types(model) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_sync_batchnorm_converts_the_trainable_norms_only():
    """Without a process group SyncBatchNorm is plain batch norm: same forward in train mode."""
    torch.manual_seed(0)
    cfg = tiny_config()
    batch = tiny_batch(cfg)
    model = build_distiller(cfg).train()
    teacher_norms = norm_types(model.teacher.backbone)
    n = len(norm_types(model))
    keys = model.state_dict().keys()
    torch.manual_seed(1)  # the same dropout masks in both passes
    with torch.no_grad():
        ref = model(batch)  # train mode: batch statistics
    converted = convert_sync_batchnorm(model)
    assert converted is model and norm_types(model) == [nn.SyncBatchNorm] * n and n > 20
    assert norm_types(model.teacher.backbone) == teacher_norms  # frozen teacher untouched
    assert model.state_dict().keys() == keys
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(batch)
    for name in ("pair_point_features", "depth_logits", "image_bev", "lidar_bev_features"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sync_batchnorm_trains_on_cuda_in_a_process_group():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        cfg = tiny_config("dist.use_gpu=true")
        batch = tiny_batch(cfg).to("cuda")
        model = build_distiller(cfg, "cuda").train()
        loss_fn = build_hybrid_view_loss(cfg).cuda()
        plain = build_distiller(cfg, "cuda").train()
        plain.load_state_dict(model.state_dict())
        convert_sync_batchnorm(model)
        assert norm_types(model) == [nn.SyncBatchNorm] * len(norm_types(plain))
        torch.manual_seed(1)  # the same dropout masks in both passes
        with torch.no_grad():
            ref = plain(batch)
        torch.manual_seed(1)
        inputs = model(batch)
        for name in ("pair_point_features", "depth_logits", "image_bev", "lidar_bev_features"):
            torch.testing.assert_close(getattr(inputs, name), getattr(ref, name), rtol=1e-3, atol=1e-4)
        terms = loss_fn(inputs, epoch=0)
        terms.total.backward()
        assert torch.isfinite(terms.total)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    finally:
        dist.destroy_process_group()
