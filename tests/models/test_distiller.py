"""The whole distiller on a tiny batch: finite loss terms, gradients where they belong."""

import numpy as np
import pytest
import torch

from hvdistill.config import Config, load_config
from hvdistill.data.augment import augment_sample
from hvdistill.data.collate import collate
from hvdistill.losses.total import build_hybrid_view_loss
from hvdistill.models.distiller import build_distiller, check_feature_grid
from tests.helpers import config_path
from tests.helpers.memory_sample import make_sample

TINY = config_path("tiny.yaml")
# crops 64 x 128 (tiny.yaml keeps the published 224 x 416): 1/11 of the teacher's and the
# lift's pixels, still hundreds of superpixels, depth cells and BEV anchors per batch
SMALL_CROPS = ["geometry.crop_height=64", "geometry.crop_width=128"]


def tiny_config(*overrides: str) -> Config:
    return load_config(TINY, [*SMALL_CROPS, *overrides])


def tiny_batch(cfg):
    augs = [
        augment_sample(make_sample(s, n_points=8000), cfg.augment, cfg.geometry, np.random.default_rng(s))
        for s in (0, 1)
    ]
    return collate(augs, cfg.geometry)


def test_forward_backward_gives_finite_terms_and_gradients_on_trainable_only():
    torch.manual_seed(0)
    cfg = tiny_config()
    batch = tiny_batch(cfg)
    model = build_distiller(cfg)
    model.train()
    loss_fn = build_hybrid_view_loss(cfg)
    inputs = model(batch)
    terms = loss_fn(inputs, epoch=0)
    for name in ("total", "ipv", "depth", "bev"):
        value = getattr(terms, name)
        assert torch.isfinite(value), f"loss term {name} is not finite: {value}"
    assert terms.ipv > 0 and terms.depth > 0 and terms.bev > 0
    assert terms.num_superpixels > 10 and terms.num_depth_cells > 10 and terms.num_bev_anchors > 10
    terms.total.backward()
    named = {id(p): n for n, p in model.named_parameters()}
    no_grad = [
        named[id(p)]
        for g in model.parameter_groups()
        for p in g.params
        if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not no_grad, f"trainable parameters without a finite gradient: {no_grad}"
    assert all(p.grad is None for p in model.frozen_parameters())
    assert model.teacher.backbone.training is False


def test_parameter_groups_cover_every_trainable_parameter_once():
    cfg = tiny_config()
    model = build_distiller(cfg)
    grouped = [id(p) for g in model.parameter_groups() for p in g.params]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)


def test_two_stage_first_stage_skips_the_bev_lift_and_still_trains():
    torch.manual_seed(0)
    cfg = tiny_config("loss.bev_start_epoch=1")
    batch = tiny_batch(cfg)
    model, loss_fn = build_distiller(cfg), build_hybrid_view_loss(cfg)
    model.train()
    assert not loss_fn.bev_active(0) and loss_fn.bev_active(1)
    inputs = model(batch, with_bev=loss_fn.bev_active(0))
    assert inputs.image_bev is None and inputs.depth_logits is not None
    terms = loss_fn(inputs, epoch=0)
    assert float(terms.bev) == 0.0 and terms.num_bev_anchors == 0 and torch.isfinite(terms.total)
    terms.total.backward()
    assert all(p.grad is not None for p in model.student.backbone.parameters() if p.requires_grad)


def test_frustum_must_start_its_rays_where_the_teacher_cells_look():
    cfg = tiny_config()
    model = build_distiller(cfg)  # checks the built pair: cell j at pixel 4j on both sides
    assert model.teacher.grid == (4, 0.0)
    assert float(model.lift.frustum[0, 0, 1, 0]) == 4.0
    model.lift.frustum = model.lift.frustum + torch.tensor([1.5, 1.5, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="frustum"):  # the old 4 x 4-block centres, 1.5 px off
        check_feature_grid(model.teacher, model.lift)


VIT = ["model.image.arch=vit_tiny_patch14", "geometry.feature_stride=14", "loss.depth_target_pool=14"]


def test_a_vit_teacher_trains_the_same_pipeline_on_its_14_px_grid():
    """64 x 128 crops: 5 x 9 cells (128 = 9 x 14 + 2: the padded 10th token's centre is outside)."""
    torch.manual_seed(0)
    cfg = tiny_config(*VIT)
    batch = tiny_batch(cfg)
    model, loss_fn = build_distiller(cfg).train(), build_hybrid_view_loss(cfg)
    assert model.teacher.grid == (14, 6.5) and loss_fn.cell_centre == 6.5
    assert float(model.lift.frustum[0, 0, 1, 0]) == 20.5 and model.lift.frustum.shape[1:3] == (5, 9)
    inputs = model(batch)
    assert inputs.depth_logits.shape[-2:] == (5, 9) and inputs.image_features.shape[-2:] == (64, 128)
    terms = loss_fn(inputs, epoch=0)
    assert all(torch.isfinite(getattr(terms, k)) for k in ("total", "ipv", "depth", "bev"))
    assert terms.num_depth_cells > 10 and terms.num_bev_anchors > 10
    terms.total.backward()
    assert model.teacher.head.weight.grad is not None and all(
        p.grad is None for p in model.frozen_parameters()
    )
    model.lift.frustum = model.lift.frustum - torch.tensor([6.5, 6.5, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="frustum"):  # rays through the patch corners, not their centres
        check_feature_grid(model.teacher, model.lift)
