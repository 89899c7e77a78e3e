"""HybridViewLoss: named terms, the weighted total, the two-stage switch, queue state."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hvdistill.config import Config, GeometryConfig, LossConfig
from hvdistill.loss_inputs import LossInputs, pair_superpixel_ids
from hvdistill.losses import HybridViewLoss, build_hybrid_view_loss

N_IMG, C, H, W, BEV = 2, 8, 16, 24, 8
GEOMETRY = GeometryConfig(depth_min=1.0, depth_max=9.0, depth_step=0.5, bev_size=BEV)  # 16 bins


def _inputs(seed: int = 0, with_bev: bool = True) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    superpixels = torch.randint(0, 5, (N_IMG, H, W), generator=g) + 10 * torch.arange(N_IMG)[:, None, None]
    q = 120
    pair_image = torch.randint(0, N_IMG, (q,), generator=g)
    pair_uv = 1.0 + torch.rand(q, 2, generator=g) * torch.tensor([W - 2.0, H - 2.0])
    cells = torch.randperm(2 * BEV * BEV, generator=g)[:30]
    return LossInputs(
        pair_point_features=F.normalize(torch.randn(q, C, generator=g), dim=1).requires_grad_(),
        pair_superpixel=pair_superpixel_ids(superpixels, pair_image, pair_uv),
        image_features=F.normalize(torch.randn(N_IMG, C, H, W, generator=g), dim=1),
        superpixels=superpixels,
        depth_logits=torch.randn(N_IMG, 16, H // 4, W // 4, generator=g).requires_grad_(),
        pair_image=pair_image,
        pair_uv=pair_uv,
        pair_depth=1.0 + 7.0 * torch.rand(q, generator=g),
        lidar_bev_features=F.normalize(torch.randn(30, C, generator=g), dim=1) if with_bev else None,
        lidar_bev_indices=cells if with_bev else None,
        image_bev=F.normalize(torch.randn(2, C, BEV, BEV, generator=g), dim=1) if with_bev else None,
    )


def test_total_is_the_weighted_sum_with_published_weights():
    loss = HybridViewLoss(LossConfig(tile_size=5), GEOMETRY, feature_dim=C)
    terms = loss(_inputs(), epoch=0)
    assert all(float(t.detach()) > 0 for t in (terms.ipv, terms.depth, terms.bev))
    expected = 1.0 * terms.ipv + 60.0 * terms.depth + 0.25 * terms.bev
    torch.testing.assert_close(terms.total, expected)
    assert terms.num_superpixels == 10 and terms.num_bev_anchors == 30 and terms.num_depth_cells > 0
    terms.total.backward()
    assert set(terms.as_floats()) == {"loss/total", "loss/ipv", "loss/depth", "loss/bev"}


def _slidr_superpixel_loss(x: LossInputs, temperature: float) -> torch.Tensor:
    """SLidR's loss_superpixels_average (pretrain/lightning_trainer.py), with dense one-hots."""
    n_sp = int(x.superpixels.max()) + 1
    valid = x.pair_superpixel >= 0
    one_hot_p = F.one_hot(x.pair_superpixel[valid], n_sp).t().float()  # (S, Q)
    one_hot_i = F.one_hot(x.superpixels.flatten(), n_sp).t().float()  # (S, N*H*W)
    k = one_hot_p @ x.pair_point_features[valid]
    k = k / (one_hot_p.sum(1)[:, None] + 1e-6)  # superpoint means, not renormalised
    q = one_hot_i @ x.image_features.permute(0, 2, 3, 1).flatten(0, 2)
    q = q / (one_hot_i.sum(1)[:, None] + 1e-6)
    mask = k[:, 0] != 0  # superpixels with a paired point
    logits = k[mask] @ q[mask].t() / temperature
    return F.cross_entropy(logits, torch.arange(int(mask.sum())))


def test_default_ipv_term_is_slidr_superpixel_loss():
    """The published recipe by default: the superpixel means go into the InfoNCE unnormalised."""
    x = _inputs(3)
    got = HybridViewLoss(LossConfig(), GEOMETRY, feature_dim=C)(x, epoch=0).ipv
    torch.testing.assert_close(got, _slidr_superpixel_loss(x, 0.07), rtol=1e-5, atol=1e-5)
    renormalised = HybridViewLoss(LossConfig(renormalize_pooled=True), GEOMETRY, feature_dim=C)(
        x, epoch=0
    ).ipv
    assert abs(float(renormalised) - float(got)) > 1e-2  # the option is a different loss


def test_custom_weights_and_tiling_do_not_change_terms():
    untiled = HybridViewLoss(LossConfig(tile_size=0), GEOMETRY, feature_dim=C)(_inputs(), 0)
    cfg = LossConfig(weight_ipv=2.0, weight_depth=3.0, weight_bev=5.0, tile_size=3)
    terms = HybridViewLoss(cfg, GEOMETRY, feature_dim=C)(_inputs(), 0)
    for name in ("ipv", "depth", "bev"):
        torch.testing.assert_close(getattr(terms, name), getattr(untiled, name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms.total, 2 * terms.ipv + 3 * terms.depth + 5 * terms.bev)


def test_two_stage_schedule_switches_bev_on():
    loss = HybridViewLoss(LossConfig(bev_start_epoch=2), GEOMETRY, feature_dim=C)
    early = loss(_inputs(with_bev=False), epoch=1)  # BEV inputs absent: the term is not computed
    assert float(early.bev.detach()) == 0.0 and early.num_bev_anchors == 0
    torch.testing.assert_close(early.total, early.ipv + 60 * early.depth)
    late = loss(_inputs(), epoch=2)
    assert float(late.bev.detach()) > 0
    with pytest.raises(ValueError, match="bev_start_epoch"):
        loss(_inputs(with_bev=False), epoch=2)


def test_queues_are_module_state_and_fill_in_training():
    loss = HybridViewLoss(LossConfig(key_queue_size=16), GEOMETRY, feature_dim=C)
    loss(_inputs(), 0)
    state = loss.state_dict()
    assert int(state["ipv_contrast.queue.count"]) == 10
    assert int(state["bev_contrast.queue.count"]) == 16
    fresh = HybridViewLoss(LossConfig(key_queue_size=16), GEOMETRY, feature_dim=C)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.ipv_contrast.queue.keys(), loss.ipv_contrast.queue.keys())


def test_build_from_config():
    cfg = Config()
    cfg.loss = dataclasses.replace(cfg.loss, key_queue_size=4)
    loss = build_hybrid_view_loss(cfg)
    assert loss.ipv_contrast.queue.buffer.shape == (4, cfg.model.feature_dim)
    assert loss.ipv_contrast.temperature == 0.07
