"""The camera-aware depth net and the full lift: shapes, finiteness, per-sample BEV tables."""

import pytest
import torch

from hvdistill.config import Config, DepthModelConfig
from hvdistill.models.depth import DepthNet, build_depth_lift, camera_parameters


def small_config() -> Config:
    cfg = Config()
    cfg.model.depth.bridge_channels = 96
    cfg.model.depth.mid_channels = 32
    cfg.model.depth.context_channels = 16
    cfg.geometry.crop_height, cfg.geometry.crop_width = 64, 96
    cfg.precision.image_dtype = "float32"
    return cfg


def test_camera_parameters_follow_bevdepth_layout(rig):
    r = rig(1, (64, 96), 0)
    p = camera_parameters(r["intrinsics"], r["image_aug"], r["camera_to_lidar"], r["lidar_aug"])
    assert p.shape == (6, 27) and p.dtype == torch.float32
    k, a, m, s = r["intrinsics"][2], r["image_aug"][2], r["lidar_aug"][2], r["camera_to_lidar"][2]
    expected = [
        k[0, 0],
        k[1, 1],
        k[0, 2],
        k[1, 2],
        a[0, 0],
        a[0, 1],
        a[0, 2],
        a[1, 0],
        a[1, 1],
        a[1, 2],
        m[0, 0],
        m[0, 1],
        m[1, 0],
        m[1, 1],
        m[2, 2],
        *s[:3, :4].reshape(-1),
    ]
    torch.testing.assert_close(p[2], torch.stack(expected).float())


def test_depth_net_shapes_and_finite(rig):
    torch.manual_seed(0)
    cfg = DepthModelConfig(mid_channels=32, context_channels=16)
    net = DepthNet(96, 118, cfg)
    r = rig(1, (64, 96), 1)
    params = camera_parameters(r["intrinsics"], r["image_aug"], r["camera_to_lidar"], r["lidar_aug"])
    depth, context = net(torch.randn(6, 96, 16, 24), params)
    assert depth.shape == (6, 118, 16, 24) and context.shape == (6, 16, 16, 24)
    assert torch.isfinite(depth).all() and torch.isfinite(context).all()
    with pytest.raises(ValueError, match="camera_param_dim"):
        DepthNet(96, 118, DepthModelConfig(camera_param_dim=12))


def test_lift_outputs_normalised_per_sample_tables(rig):
    torch.manual_seed(0)
    cfg = small_config()
    lift = build_depth_lift(cfg.model, cfg.geometry, cfg.precision)
    r = rig(2, (64, 96), 2)
    features = torch.randn(12, 64, 16, 24, requires_grad=True)
    out = lift(
        features, r["intrinsics"], r["camera_to_lidar"], r["image_aug"], r["lidar_aug"], r["image_batch"]
    )
    cells = 256 * 256
    assert out.depth_logits.shape == (12, 118, 16, 24) and out.depth_logits.dtype == torch.float32
    assert out.bev.shape == (2 * cells, 16) and out.occupied.shape == (2 * cells,)
    assert out.grid().shape == (2, 16, 256, 256) and out.occupancy_grid().shape == (2, 256, 256)
    assert torch.isfinite(out.bev).all()
    norms = out.bev.norm(dim=1)
    torch.testing.assert_close(norms[out.occupied], torch.ones(int(out.occupied.sum())))
    assert torch.all(norms[~out.occupied] == 0)
    assert out.occupied[:cells].sum() > 1000 and out.occupied[cells:].sum() > 1000  # both samples
    iy, ix = 10, 200  # the grid view and the table agree on (sample, y, x) addressing
    torch.testing.assert_close(out.grid()[1, :, iy, ix], out.bev[cells + iy * 256 + ix])
    (out.bev[out.occupied].sum() + out.depth_logits.mean()).backward()
    assert features.grad.abs().sum() > 0
    assert lift.depth_net.context_conv.weight.grad.abs().sum() > 0


def test_lift_refuses_feature_maps_of_the_wrong_size(rig):
    cfg = small_config()
    lift = build_depth_lift(cfg.model, cfg.geometry)
    r = rig(1, (64, 96), 3)
    with pytest.raises(ValueError, match="frustum"):
        lift(
            torch.randn(6, 64, 8, 12),
            r["intrinsics"],
            r["camera_to_lidar"],
            r["image_aug"],
            r["lidar_aug"],
            r["image_batch"],
        )
