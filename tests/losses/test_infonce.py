"""Tiled InfoNCE equals the untiled loss (and a float64 reference); the key queue; fp32 logits."""

import pytest
import torch
import torch.nn.functional as F

from hvdistill.losses.infonce import InfoNCE, KeyQueue, contrast, infonce_sum

TAU = 0.07


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def _reference(q, k, extra, positives, normaliser):
    """Float64 loss from the definition: sum_i (logsumexp_j q_i.k_j / tau - q_i.k_p / tau)."""
    cols = torch.cat([k, extra]).double() if extra is not None else k.double()
    logits = q.double() @ cols.t() / TAU
    pos = logits[torch.arange(q.shape[0]), positives]
    return (torch.logsumexp(logits, dim=1) - pos).sum() / normaliser


def _loss_and_grads(q0, k0, positives, tile, extra, normaliser):
    q = q0.clone().requires_grad_()
    k = k0.clone().requires_grad_()
    loss = infonce_sum(q, k, positives, TAU, tile, extra, normaliser)
    loss.backward()
    return loss.detach(), q.grad, k.grad


@pytest.mark.parametrize("tile", [16, 10, 1, 1000])  # divides 64, does not, degenerate, > N
@pytest.mark.parametrize("with_queue", [False, True])
def test_tiled_equals_untiled(tile, with_queue):
    n, d = 64, 32
    q, k = _unit(n, d, 0), _unit(n, d, 1)
    extra = _unit(23, d, 2) if with_queue else None
    positives = torch.arange(n)
    ref = _loss_and_grads(q, k, positives, 0, extra, n)
    got = _loss_and_grads(q, k, positives, tile, extra, n)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    exact = _reference(q, k, extra, positives, n)
    assert abs(float(got[0]) - float(exact)) < 1e-5


def test_tiled_gradients_match_float64_autograd():
    n, m, d = 12, 30, 8  # more keys than anchors, positives off the diagonal
    q, k = _unit(n, d, 3), _unit(m, d, 4)
    positives = torch.tensor([5, 0, 29, 7, 7, 3, 11, 12, 20, 1, 2, 28])
    _, gq, gk = _loss_and_grads(q, k, positives, 7, None, 5.0)
    qd, kd = q.double().requires_grad_(), k.double().requires_grad_()
    _reference(qd, kd, None, positives, 5.0).backward()
    torch.testing.assert_close(gq.double(), qd.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gk.double(), kd.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tile", [0, 8])
def test_logits_are_fp32_under_bf16_autocast_and_inputs(tile):
    n, d = 20, 16
    q, k = _unit(n, d, 5), _unit(n, d, 6)
    positives = torch.arange(n)
    plain = infonce_sum(q, k, positives, TAU, tile, None, n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = infonce_sum(q, k, positives, TAU, tile, None, n)
    assert auto.dtype == torch.float32
    assert abs(float(auto) - float(plain)) < 1e-6
    qb = q.bfloat16().requires_grad_()
    loss = infonce_sum(qb, k.bfloat16(), positives, TAU, tile, None, n)
    loss.backward()
    assert loss.dtype == torch.float32 and qb.grad.dtype == torch.bfloat16
    exact = _reference(q.bfloat16().float(), k.bfloat16().float(), None, positives, n)
    assert abs(float(loss.detach()) - float(exact)) < 1e-5


def test_key_queue_is_fifo_newest_first():
    queue = KeyQueue(size=5, dim=2)
    assert queue.keys().shape == (0, 2)
    first = torch.arange(6.0).reshape(3, 2)  # rows 0, 1, 2
    queue.enqueue(first)
    torch.testing.assert_close(queue.keys(), first.flip(0))
    second = 10 + torch.arange(8.0).reshape(4, 2)  # rows 10.., 12.., 14.., 16..
    queue.enqueue(second)
    expected = torch.cat([second.flip(0), first.flip(0)[:1]])  # newest 4, then row 2
    torch.testing.assert_close(queue.keys(), expected)
    assert int(queue.count) == 5
    assert set(queue.state_dict()) == {"buffer", "count"}


@pytest.mark.parametrize("tile", [0, 6])
def test_module_queue_adds_past_keys_as_negatives(tile):
    n, d = 10, 8
    module = InfoNCE(TAU, tile, gather=True, queue_size=15, dim=d)
    q1, k1, q2, k2 = (_unit(n, d, s) for s in (7, 8, 9, 10))
    first = module(q1, k1)
    torch.testing.assert_close(first.loss, infonce_sum(q1, k1, torch.arange(n), TAU, 0, None, n))
    q2 = q2.requires_grad_()
    second = module(q2, k2)  # negatives: k2 and k1 (queued after step 1)
    expected = infonce_sum(q2.detach(), k2, torch.arange(n), TAU, 0, k1, n)
    torch.testing.assert_close(second.loss.detach(), expected, atol=1e-6, rtol=1e-6)
    second.loss.backward()  # the queue was replaced, not overwritten, before this backward
    assert torch.isfinite(q2.grad).all()
    torch.testing.assert_close(module.queue.keys(), torch.cat([k2.flip(0), k1.flip(0)[:5]]))
    module.eval()
    module(q1, k1)
    assert int(module.queue.count) == 15  # evaluation leaves the queue alone


def test_contrast_single_process_is_the_plain_mean():
    n, d = 9, 4
    q, k = _unit(n, d, 11), _unit(n, d, 12)
    result = contrast(q, k, TAU, tile_size=4, gather=True)
    assert result.num_rows == n
    torch.testing.assert_close(result.loss, F.cross_entropy(q @ k.t() / TAU, torch.arange(n)))
    with pytest.raises(ValueError, match="matched pair"):
        contrast(q, k[:-1], TAU)
