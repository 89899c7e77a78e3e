"""The full 3D student (tiny config) on small clouds voxelised by the real geometry code."""

from __future__ import annotations

import io

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from hvdistill.config import Config, load_config
from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.voxel import voxelize
from hvdistill.models.lidar import LidarStudent, build_lidar_model, sparse_input
from tests.helpers import config_path

TINY = config_path("tiny.yaml")
HEADS = ["strided", "column"]


def tiny_config(bev_head: str = "strided") -> Config:
    return load_config(TINY, [f"model.lidar.bev_head={bev_head}"])


def surface_cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) x, y, z, intensity on a ground patch and a wall: voxels with real neighbours."""
    ground = np.c_[rng.uniform(-4, 4, (n // 2, 2)), rng.normal(-1.8, 0.03, n // 2)]
    wall = np.c_[
        rng.uniform(-4, 4, n - n // 2), rng.normal(3.0, 0.03, n - n // 2), rng.uniform(-1.8, 1.0, n - n // 2)
    ]
    xyz = np.r_[ground, wall]
    return np.c_[xyz, rng.uniform(0, 1, n)].astype(np.float32)


def voxel_batch(cfg: Config, seed: int = 0, samples: int = 2, n: int = 1500):
    """Clouds -> (coords (V, 4) int32 (b, z, y, x), feats (V, 1), [Z, Y, X], B, clouds)."""
    rng = np.random.default_rng(seed)
    coords, feats, clouds = [], [], []
    for b in range(samples):
        cloud = surface_cloud(rng, n)
        vox = voxelize(cloud, cfg.geometry.voxel_size, cfg.geometry.point_range)
        c = vox.coords  # (V_b, 3) ix, iy, iz
        coords.append(np.c_[np.full(len(c), b), c[:, 2], c[:, 1], c[:, 0]])
        feats.append(cloud[vox.kept, 3:4])
        clouds.append(cloud[vox.in_range])
    shape = list(vox.spatial_shape[::-1])  # Z, Y, X
    return (
        torch.from_numpy(np.concatenate(coords)).int(),
        torch.from_numpy(np.concatenate(feats)),
        shape,
        samples,
        clouds,
    )


def build(cfg: Config, seed: int = 0) -> LidarStudent:
    torch.manual_seed(seed)
    return build_lidar_model(cfg.model, cfg.geometry, "cpu")


@pytest.mark.parametrize("head", HEADS)
def test_forward_backward_shapes_norms_and_gradients(head):
    cfg = tiny_config(head)
    coords, feats, shape, batch, _ = voxel_batch(cfg)
    model = build(cfg)
    out = model(coords, feats, shape, batch)
    v, d = len(coords), cfg.model.feature_dim
    assert out.voxel_features.shape == (v, cfg.model.lidar.planes[7])
    assert out.ipv.shape == (v, d) and out.bev.shape[1] == d
    assert out.bev_indices.dtype == torch.int64 and out.bev_indices.shape == (len(out.bev), 3)
    for t in (out.voxel_features, out.ipv, out.bev):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    torch.testing.assert_close(out.ipv.norm(dim=1), torch.ones(v))
    torch.testing.assert_close(out.bev.norm(dim=1), torch.ones(len(out.bev)))
    (out.ipv[:, 0].sum() + out.bev[:, 1].sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("head", HEADS)
def test_bev_cells_match_the_bev_grid_of_the_points(head):
    cfg = tiny_config(head)
    coords, feats, shape, batch, clouds = voxel_batch(cfg, seed=1)
    out = build(cfg)(coords, feats, shape, batch)
    idx = out.bev_indices
    assert len(torch.unique(idx, dim=0)) == len(idx)
    size = cfg.geometry.bev_size
    expected = torch.unique(
        torch.stack([coords[:, 0], coords[:, 2] // 4, coords[:, 3] // 4], 1).long(), dim=0
    )
    assert torch.equal(idx, expected)
    grid = BEVGrid.from_config(cfg.geometry)
    for b, cloud in enumerate(clouds):
        flat = idx[idx[:, 0] == b]
        got = set((flat[:, 1] * size + flat[:, 2]).tolist())
        assert got == set(grid.flat_index(cloud[:, :2]).tolist())


def test_voxel_outputs_follow_the_input_order():
    """Permuting the input rows permutes every per-voxel output the same way."""
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=2)
    model = build(cfg)
    out = model(coords, feats, shape, batch)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))
    out_p = model(coords[perm], feats[perm], shape, batch)
    torch.testing.assert_close(out_p.voxel_features, out.voxel_features[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.ipv, out.ipv[perm], atol=1e-5, rtol=1e-4)
    assert torch.equal(out_p.bev_indices, out.bev_indices)
    torch.testing.assert_close(out_p.bev, out.bev, atol=1e-5, rtol=1e-4)


def test_two_identical_runs_are_bitwise_identical():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=3)
    results = []
    for _ in range(2):
        model = build(cfg, seed=7)
        out = model(coords, feats, shape, batch)
        (out.ipv.square().sum() + out.bev[:, 0].sum()).backward()
        results.append((out, [p.grad for p in model.parameters()]))
    (a, ga), (b, gb) = results
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


def test_backbone_alone_and_state_dict_round_trip():
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=4)
    model = build(cfg, seed=0).eval()
    state = model.state_dict()
    assert all(type(v) is torch.Tensor for v in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    other = build(cfg, seed=1).eval()
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        out, out2 = model(coords, feats, shape, batch), other(coords, feats, shape, batch)
        alone = model.backbone(sparse_input(coords, feats, shape, batch)).features
    assert all(torch.equal(x, y) for x, y in zip(out, out2))
    assert torch.equal(alone, out.voxel_features)


def test_sync_batchnorm_conversion_from_outside():
    model = build(tiny_config())
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert n_bn > 0
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(isinstance(m, nn.BatchNorm1d) for m in converted.modules())


def test_paper_config_builds_the_minkunet34c_layout():
    cfg = Config()
    model = build_lidar_model(cfg.model, cfg.geometry, "cpu")
    unet = model.backbone
    assert [len(s) for s in unet.encoder] == [2, 3, 4, 6]
    assert [len(s) for s in unet.decoder] == [2, 2, 2, 2]
    assert unet.out_channels == 96
    widths = [s[0].conv1.out_channels for s in list(unet.encoder) + list(unet.decoder)]
    assert widths == [32, 64, 128, 256, 256, 128, 96, 96]
    assert [s[0].conv1.in_channels for s in unet.decoder] == [256 + 128, 128 + 64, 96 + 32, 96 + 32]
    n_params = sum(p.numel() for p in unet.parameters())
    assert 30e6 < n_params < 45e6  # MinkUNet34C: ~37.8M parameters


def test_stem_and_batchnorm_momenta_follow_slidr_minkunet34c():
    """res16unet.py: conv0p1s1 (one 3x3x3 conv, config kernel_size 3) + bn0 + relu; bn_momentum 0.05
    on the stem, strided, transposed and projection norms, torch's 0.1 inside the residual blocks."""
    unet = build_lidar_model(Config().model, Config().geometry, "cpu").backbone
    convs = [m for m in unet.stem.modules() if isinstance(m, spconv.SubMConv3d)]
    assert [(c.in_channels, c.out_channels, tuple(c.kernel_size)) for c in convs] == [(1, 32, (3, 3, 3))]
    momenta = {name: m.momentum for name, m in unet.named_modules() if isinstance(m, nn.BatchNorm1d)}
    in_blocks = {n: v for n, v in momenta.items() if n.endswith(("norm1", "norm2"))}
    outside = {n: v for n, v in momenta.items() if n not in in_blocks}
    assert set(in_blocks.values()) == {0.1} and len(in_blocks) == 2 * (2 + 3 + 4 + 6 + 2 + 2 + 2 + 2)
    assert set(outside.values()) == {0.05} and any(".project." in n for n in outside)
    assert len([n for n in outside if n.startswith(("stem", "down", "up"))]) == 1 + 4 + 4


def test_stem_option_and_momentum_semantics():
    """`stem_convs=2` is the earlier stem; one training step moves running stats by the momentum."""
    cfg = load_config(TINY, ["model.lidar.stem_convs=2", "model.lidar.bn_momentum=0.3"])
    model = build(cfg).train()
    stem = model.backbone.stem
    assert len(stem) == 2 and "stem.1.0.weight" in model.backbone_state_dict()
    seen = {}
    stem[0][0].register_forward_hook(lambda mod, args, out: seen.update(rows=out.features.detach()))
    coords, feats, shape, batch_size, _ = voxel_batch(cfg)
    model(coords, feats, shape, batch_size)
    torch.testing.assert_close(stem[0][1].running_mean, 0.3 * seen["rows"].mean(0))  # torch/ME semantics


def test_build_reports_inconsistent_settings():
    cfg = tiny_config()
    cfg.model.lidar.bev_head_stride = 2
    cfg.model.lidar.sparse_dtype = "float16"
    cfg.geometry.bev_size = 128
    with pytest.raises(ValueError) as err:
        build_lidar_model(cfg.model, cfg.geometry, "cpu")
    assert "bev_head_stride=4" in str(err.value) and "float16" in str(err.value)
    cfg.model.lidar.bev_head_stride = 4
    with pytest.raises(ValueError, match="bev_size=256"):
        build_lidar_model(cfg.model, cfg.geometry, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sparse_dtype", ["float32", "float16"])
def test_gpu_matches_cpu(sparse_dtype):
    cfg = tiny_config()
    coords, feats, shape, batch, _ = voxel_batch(cfg, seed=6)
    cpu = build(cfg).eval()
    cfg.model.lidar.sparse_dtype = sparse_dtype
    gpu = build_lidar_model(cfg.model, cfg.geometry, "cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    with torch.no_grad():
        ref = cpu(coords, feats, shape, batch)
        out = gpu(coords.cuda(), feats.cuda(), shape, batch)
    tol = dict(atol=1e-3, rtol=1e-3) if sparse_dtype == "float32" else dict(atol=3e-2, rtol=3e-2)
    assert torch.equal(out.bev_indices.cpu(), ref.bev_indices)
    torch.testing.assert_close(out.ipv.cpu(), ref.ipv, **tol)
    torch.testing.assert_close(out.bev.cpu(), ref.bev, **tol)
