"""Superpixel / superpoint scatter-mean pooling against a Python-loop reference."""

import pytest
import torch
import torch.nn.functional as F

from hvdistill.loss_inputs import pair_superpixel_ids
from hvdistill.losses.pooling import pool_superpixels

N_IMG, C, H, W = 3, 8, 12, 16


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_IMG, C, H, W, generator=g)
    local = torch.randint(0, 6, (N_IMG, H, W), generator=g)  # 6 superpixels per image
    superpixels = local + 100 * torch.arange(N_IMG)[:, None, None]  # unique per image
    superpixels[:, :2, :3] = -1  # a corner without superpixel
    superpixels[2][superpixels[2] == 205] = 204  # id 205 has no pixel at all
    q = 40
    pair_image = torch.randint(0, N_IMG, (q,), generator=g)
    pair_uv = torch.rand(q, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])
    point_feats = torch.randn(q, C, generator=g)
    pair_sp = pair_superpixel_ids(superpixels, pair_image, pair_uv)
    pair_sp[:3] = 205  # pairs pointing at a superpixel without pixels are dropped
    return point_feats, pair_sp, feats, superpixels, pair_image, pair_uv


def _naive(point_feats, pair_sp, feats, superpixels, normalize):
    ids, pts, pix = [], [], []
    for sp in sorted(set(pair_sp.tolist()) - {-1}):
        mask = superpixels == sp  # (N, H, W)
        if not mask.any():
            continue
        ids.append(sp)
        pts.append(point_feats[pair_sp == sp].mean(0))
        pix.append(torch.stack([feats[n, :, r, c] for n, r, c in mask.nonzero().tolist()]).mean(0))
    pts, pix = torch.stack(pts), torch.stack(pix)
    if normalize:
        pts, pix = F.normalize(pts, dim=1), F.normalize(pix, dim=1)
    return torch.tensor(ids), pts, pix


def test_pair_superpixel_ids_round_to_pixel_centres():
    sp = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    uv = torch.tensor([[0.4, 0.4], [0.6, 0.4], [2.5001, 1.6], [3.4, 2.49]])
    ids = pair_superpixel_ids(sp, torch.tensor([0, 0, 1, 1]), uv)
    assert ids.tolist() == [sp[0, 0, 0], sp[0, 0, 1], sp[1, 2, 3], sp[1, 2, 3]]


@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_equals_loop_reference(normalize):
    point_feats, pair_sp, feats, superpixels, _, _ = _case()
    pooled = pool_superpixels(point_feats, pair_sp, feats, superpixels, normalize=normalize)
    ids, pts, pix = _naive(point_feats, pair_sp, feats, superpixels, normalize)
    assert 205 not in pooled.ids.tolist() and len(ids) > 5
    assert pooled.ids.tolist() == ids.tolist()
    torch.testing.assert_close(pooled.superpoints, pts, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pooled.superpixels, pix, atol=1e-6, rtol=1e-5)
    if normalize:
        torch.testing.assert_close(pooled.superpixels.norm(dim=1), torch.ones(len(ids)))


def test_pooling_gradients_equal_loop_reference():
    point_feats, pair_sp, feats, superpixels, _, _ = _case(1)
    w = torch.randn(2, C)
    grads = []
    for fn in ("fast", "naive"):
        pf, ff = point_feats.clone().requires_grad_(), feats.clone().requires_grad_()
        if fn == "fast":
            out = pool_superpixels(pf, pair_sp, ff, superpixels, normalize=True)
            a, b = out.superpoints, out.superpixels
        else:
            _, a, b = _naive(pf, pair_sp, ff, superpixels, True)
        ((a @ w[0]).sin().sum() + (b @ w[1]).cos().sum()).backward()
        grads.append((pf.grad, ff.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-5)


def test_no_pairs_gives_empty_rows():
    _, _, feats, superpixels, _, _ = _case()
    pooled = pool_superpixels(torch.zeros(4, C), torch.full((4,), -1), feats, superpixels)
    assert pooled.superpoints.shape == (0, C) and pooled.superpixels.shape == (0, C)
