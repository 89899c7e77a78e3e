"""Depth targets (min non-zero depth per patch centred on its cell) and the BCE depth loss vs references.

The patch centred on pixel 4j is tested in tests/models/image/test_feature_centres.py.
"""

import math

import pytest
import torch

from hvdistill.losses.depth import depth_loss, depth_targets

N_IMG, H, W, POOL = 2, 16, 24, 4
HF, WF = H // POOL, W // POOL
D_MIN, D_MAX, D_STEP = 1.0, 9.0, 0.5  # 16 bins


def _pairs(seed: int = 0, q: int = 150):
    g = torch.Generator().manual_seed(seed)
    pair_image = torch.randint(0, N_IMG, (q,), generator=g)
    pair_uv = 1.0 + torch.rand(q, 2, generator=g) * torch.tensor([W - 2.0, H - 2.0])
    pair_depth = 0.5 + 10.0 * torch.rand(q, generator=g)  # some below / beyond the bins
    pair_depth[:10] = 0.0  # zero depths never count
    return pair_image, pair_uv, pair_depth


def _nearest_cell(x: float, n: int) -> int:
    """The cell whose centre (pixel POOL * j) is nearest to x; ties to the higher cell."""
    return max(range(n), key=lambda j: (-abs(x - POOL * j), j))


def _naive_targets(pair_image, pair_uv, pair_depth):
    """Per cell, the min non-zero depth of the pairs nearer to its centre (pixel 4j) than to any other."""
    out = torch.zeros(N_IMG, HF, WF)
    for n, (u, v), d in zip(pair_image.tolist(), pair_uv.tolist(), pair_depth.tolist()):
        i, j = _nearest_cell(v, HF), _nearest_cell(u, WF)
        if d > 0 and (out[n, i, j] == 0 or d < out[n, i, j]):
            out[n, i, j] = d
    return out


def test_targets_equal_min_pooling_reference():
    pairs = _pairs()
    got = depth_targets(*pairs, N_IMG, HF, WF, POOL)
    torch.testing.assert_close(got, _naive_targets(*pairs))
    assert (got == 0).any() and (got > 0).any()


def test_vit_targets_equal_the_reference_on_cells_at_14j_plus_6_5():
    """A ViT/14 grid on a 44 x 76 crop (3 x 5 cells, the crop reaching past the last cells' windows):
    each pair goes to the cell whose centre 14 j + 6.5 is nearest, none is dropped."""
    h, w, pool, centre, hf, wf = 44, 76, 14, 6.5, 3, 5
    g = torch.Generator().manual_seed(3)
    q = 200
    pair_image = torch.randint(0, N_IMG, (q,), generator=g)
    pair_uv = torch.rand(q, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])  # anywhere in the crop
    pair_depth = 1.0 + 10.0 * torch.rand(q, generator=g)
    got = depth_targets(pair_image, pair_uv, pair_depth, N_IMG, hf, wf, pool, centre, (h, w))
    expected = torch.zeros(N_IMG, hf, wf)
    for n, (u, v), d in zip(pair_image.tolist(), pair_uv.tolist(), pair_depth.tolist()):
        i = max(range(hf), key=lambda k: (-abs(v - pool * k - centre), k))
        j = max(range(wf), key=lambda k: (-abs(u - pool * k - centre), k))
        if expected[n, i, j] == 0 or d < expected[n, i, j]:
            expected[n, i, j] = d
    torch.testing.assert_close(got, expected)
    assert (got > 0).all()


def _naive_loss(logits, targets, per_bin):
    prob = torch.softmax(logits.double(), dim=1)
    total, cells = 0.0, 0
    n_bins = logits.shape[1]
    for n, i, j in (targets > 0).nonzero().tolist():
        b = math.floor((targets[n, i, j].item() - D_MIN) / D_STEP)
        if not 0 <= b < n_bins:
            continue  # outside [depth_min, depth_max): not counted
        cells += 1
        for k in range(n_bins):
            p = prob[n, k, i, j].item()
            total -= math.log(p) if k == b else math.log(1.0 - p)
    return total / (cells * (n_bins if per_bin else 1))


@pytest.mark.parametrize("reduction", ["cells_x_bins", "cells"])
def test_loss_equals_reference_and_ignores_invalid_cells(reduction):
    pairs = _pairs(1)
    targets = depth_targets(*pairs, N_IMG, HF, WF, POOL)
    logits = torch.randn(N_IMG, 16, HF, WF, generator=torch.Generator().manual_seed(2))
    logits.requires_grad_()
    result = depth_loss(logits, targets, D_MIN, D_MAX, D_STEP, reduction)
    ref = _naive_loss(logits.detach(), targets, reduction == "cells_x_bins")
    assert abs(float(result.loss.detach()) - ref) < 1e-5
    result.loss.backward()
    bins = torch.floor((targets - D_MIN) / D_STEP)
    invalid = (targets == 0) | (bins < 0) | (bins >= 16)
    assert invalid.any() and (~invalid).sum() == result.num_cells
    assert (logits.grad.permute(0, 2, 3, 1)[invalid] == 0).all()
    assert (logits.grad.permute(0, 2, 3, 1)[~invalid].abs().sum(1) > 0).all()


def test_loss_is_fp32_under_autocast_and_checks_bins():
    targets = torch.full((1, 2, 2), 3.2)
    logits = torch.randn(1, 16, 2, 2)
    plain = depth_loss(logits, targets, D_MIN, D_MAX, D_STEP).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = depth_loss(logits, targets, D_MIN, D_MAX, D_STEP).loss
    assert auto.dtype == torch.float32 and float(auto) == pytest.approx(float(plain), abs=1e-7)
    with pytest.raises(ValueError, match="bins"):
        depth_loss(torch.randn(1, 15, 2, 2), targets, D_MIN, D_MAX, D_STEP)


def test_bce_equals_torch_and_a_saturated_wrong_bin_keeps_its_gradient():
    import torch.nn.functional as F

    from hvdistill.losses.depth import saturation_safe_bce

    logits = torch.randn(40, 16, generator=torch.Generator().manual_seed(3)) * 4
    onehot = F.one_hot(torch.arange(40) % 16, 16).bool()
    ours = saturation_safe_bce(torch.log_softmax(logits, 1), onehot)
    theirs = F.binary_cross_entropy(torch.softmax(logits, 1), onehot.float(), reduction="sum")
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    # every cell saturated on a wrong bin: what a collapsed depth net outputs
    saturated = torch.zeros(4, 16)
    saturated[:, 5] = 300.0
    targets = F.one_hot(torch.tensor([0, 1, 2, 3]), 16).bool()
    x = saturated.clone().requires_grad_()
    loss = saturation_safe_bce(torch.log_softmax(x, 1), targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (x.grad[:, :4].diagonal() < 0).all()  # raising the true bin lowers the loss
    assert (x.grad[:, 5] > 0).all()  # the wrong bin is pushed down
    y = saturated.clone().requires_grad_()  # the clamped reference: no gradient left at all
    F.binary_cross_entropy(torch.softmax(y, 1), targets.float(), reduction="sum").backward()
    assert float(y.grad.abs().max()) == 0.0
