"""InfoNCE with large negative pools: cross-rank keys, a queue of past keys, key tiling.

Rows are 3D anchors (queries), columns are 2D keys; row i's target is its own key (the
diagonal), everything else is a negative. Logits are always fp32 (inputs are cast, autocast is
disabled inside), divided by the temperature.

Large pools, all exact (see tests/losses/test_infonce.py):
- Cross-rank keys (`gather=True`): the keys of all ranks are gathered with gradients
  (`hvdistill.dist.all_gather_with_grad`); each rank computes only its own rows against all
  keys (memory n_local x N, not N x N). The positive of local row i is global column
  offset_of_rank + i.
- A queue of past keys (`KeyQueue`): detached extra negative columns after the N current keys;
  a FIFO of `LossConfig.key_queue_size` rows, refreshed with this step's (gathered) keys after
  the loss has been computed, so a batch's keys are never their own negatives. The keys come
  from the trainable teacher head of earlier steps, not from a momentum (EMA) encoder as in
  MoCo, so older entries are staler (docs/method.md).
- Tiling (`tile_size > 0`): keys are visited `tile_size` columns at a time with a streaming
  log-sum-exp; the positive logits are computed directly; a hand-written backward recomputes
  each tile's logits. The full (n x N) logit matrix is never held; peak memory is n x tile.

Normalisation (one rule for every loss term of hvdistill/losses/): a rank's loss is the SUM of
its rows' cross-entropies divided by the GLOBAL number of rows (all ranks). Summed over ranks
it is the single-process mean over the concatenated batch, and after backward (whose gather
sums key gradients over ranks) the gradient of each rank's inputs equals the single-process
gradient of those rows. Parameter gradients must therefore be SUMMED over ranks; an engine
that AVERAGES them (DDP, DeepSpeed) must back-propagate `world_size() * loss`. With one
process this is the ordinary mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvdistill import dist


class KeyQueue(nn.Module):
    """FIFO of the most recent `size` keys (detached), newest first; a module buffer.

    `enqueue` replaces the buffer with a new tensor instead of writing in place, so a loss that
    saved the previous contents for its backward is never disturbed.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("buffer", torch.zeros(size, dim))  # (size, dim)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def keys(self) -> torch.Tensor:
        """(filled, dim) the stored keys, newest first."""
        return self.buffer[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Push (M, dim) keys; the oldest fall out once `size` is reached."""
        keys = keys.detach().to(self.buffer.dtype)
        self.buffer = torch.cat([keys.flip(0), self.buffer], dim=0)[: self.size].contiguous()
        self.count = torch.clamp(self.count + keys.shape[0], max=self.size)


def _tile_lse(qs: torch.Tensor, keys: torch.Tensor, tile: int, lse: torch.Tensor) -> torch.Tensor:
    """Fold the log-sum-exp of qs @ keys.T, `tile` columns at a time, into `lse` (n,)."""
    for start in range(0, keys.shape[0], tile):
        logits = torch.mm(qs, keys[start : start + tile].t())  # (n, T)
        peak = logits.amax(dim=1)  # (n,)
        total = logits.sub_(peak[:, None]).exp_().sum(dim=1)  # (n,)
        del logits  # free this tile before the next one is allocated
        lse = torch.logaddexp(lse, peak + total.log())
    return lse


def _tile_grads(
    qs: torch.Tensor,
    keys: torch.Tensor,
    lse: torch.Tensor,
    tile: int,
    grad_qs: torch.Tensor,
    grad_keys: torch.Tensor | None,
) -> None:
    """Accumulate softmax @ keys into grad_qs and softmax.T @ qs into grad_keys, per tile."""
    for start in range(0, keys.shape[0], tile):
        k_tile = keys[start : start + tile]  # (T, d)
        prob = torch.mm(qs, k_tile.t()).sub_(lse[:, None]).exp_()  # (n, T) softmax entries
        grad_qs.addmm_(prob, k_tile)
        if grad_keys is not None:
            torch.mm(prob.t(), qs, out=grad_keys[start : start + tile])
        del prob  # free this tile before the next one is allocated


class _TiledInfoNCE(torch.autograd.Function):
    """sum_i [lse_i - q_i . k_{p_i} / t] / normaliser, lse_i over q_i . k_j / t, tiled over keys."""

    @staticmethod
    def forward(ctx, q, keys, extra, positives, temperature: float, tile: int, normaliser: float):
        with torch.autocast(device_type=q.device.type, enabled=False):
            qs = q.float() / temperature  # (n, d)
            kf, ef = keys.float(), extra.float()  # (N, d), (M, d)
            lse = torch.full((qs.shape[0],), float("-inf"), device=q.device)  # (n,)
            lse = _tile_lse(qs, kf, tile, lse)
            lse = _tile_lse(qs, ef, tile, lse)
            positive = (qs * kf[positives]).sum(dim=1)  # (n,)
            loss = (lse - positive).sum() / normaliser
        ctx.save_for_backward(qs, kf, ef, positives, lse)
        ctx.temperature, ctx.tile, ctx.normaliser = temperature, tile, normaliser
        ctx.dtypes = (q.dtype, keys.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        qs, kf, ef, positives, lse = ctx.saved_tensors
        need_keys = ctx.needs_input_grad[1]
        with torch.autocast(device_type=qs.device.type, enabled=False):
            grad_qs = torch.zeros_like(qs)  # (n, d)
            grad_keys = torch.empty_like(kf) if need_keys else None  # (N, d)
            _tile_grads(qs, kf, lse, ctx.tile, grad_qs, grad_keys)
            _tile_grads(qs, ef, lse, ctx.tile, grad_qs, None)
            grad_qs.sub_(kf[positives])
            scale = grad_out.float() / ctx.normaliser
            grad_q = grad_qs.mul_(scale / ctx.temperature).to(ctx.dtypes[0])
            if grad_keys is not None:
                grad_keys.index_add_(0, positives, qs, alpha=-1.0)
                grad_keys = grad_keys.mul_(scale).to(ctx.dtypes[1])
        return grad_q, grad_keys, None, None, None, None, None


def infonce_sum(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    tile_size: int = 0,
    extra_keys: torch.Tensor | None = None,
    normaliser: float = 1.0,
) -> torch.Tensor:
    """sum_i CE(row i, target positives[i]) / normaliser over columns [keys; extra_keys].

    anchors (n, d), keys (N, d), positives (n,) int64 column of each row's key, extra_keys
    (M, d) detached negatives. tile_size 0 materialises the (n, N + M) fp32 logits and uses
    autograd; > 0 streams over key tiles with a hand-written backward. Both give the same loss
    and gradients.
    """
    extra = keys.new_zeros((0, keys.shape[1])) if extra_keys is None else extra_keys.detach()
    if tile_size > 0:
        return _TiledInfoNCE.apply(anchors, keys, extra, positives, temperature, tile_size, float(normaliser))
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        columns = torch.cat([keys.float(), extra.float()], dim=0)  # (N + M, d)
        logits = torch.mm(anchors.float(), columns.t()) / temperature  # (n, N + M)
        return F.cross_entropy(logits, positives, reduction="sum") / normaliser


@dataclass
class ContrastResult:
    loss: torch.Tensor  # scalar: this rank's rows' sum / global row count (module docstring)
    keys: torch.Tensor  # (N, d) detached keys of all ranks (what the queue takes)
    num_rows: int  # rows over all ranks


def contrast(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    temperature: float,
    tile_size: int = 0,
    gather: bool = True,
    extra_keys: torch.Tensor | None = None,
    sizes: list[int] | None = None,
) -> ContrastResult:
    """InfoNCE of matched (n, d) anchors and keys (row i's positive is key i).

    With `gather` and a process group, keys of every rank are gathered with gradients and this
    rank's rows are scored against all of them. `sizes` (every rank's row count, in rank order,
    from the caller's one `dist.all_gather_counts` of all its terms) saves this call's own size
    exchange. Collective: every rank must call it.
    """
    if anchors.shape[0] != keys.shape[0]:
        raise ValueError(
            f"contrast: {anchors.shape[0]} anchors but {keys.shape[0]} keys; "
            "row i of each must be a matched pair"
        )
    if sizes is None:
        sizes = dist.all_gather_sizes(anchors.shape[0], anchors.device)
    num_rows = sum(sizes)
    offset = 0
    if gather and dist.is_distributed():
        keys = dist.all_gather_with_grad(keys, sizes)
        offset = sum(sizes[: dist.rank()])
    positives = offset + torch.arange(anchors.shape[0], device=anchors.device)  # (n,)
    loss = infonce_sum(
        anchors, keys, positives, temperature, tile_size, extra_keys, normaliser=max(num_rows, 1)
    )
    return ContrastResult(loss=loss, keys=keys.detach(), num_rows=num_rows)


class InfoNCE(nn.Module):
    """The configured contrastive loss: temperature, tiling, gathering and an optional queue."""

    def __init__(self, temperature: float, tile_size: int, gather: bool, queue_size: int, dim: int) -> None:
        super().__init__()
        self.temperature, self.tile_size, self.gather = temperature, tile_size, gather
        self.queue = KeyQueue(queue_size, dim) if queue_size > 0 else None

    def forward(
        self, anchors: torch.Tensor, keys: torch.Tensor, sizes: list[int] | None = None
    ) -> ContrastResult:
        """Score anchors (n, d) against keys (n, d) (+ other ranks' keys, + the queue).

        `sizes`: every rank's row count, when the caller has exchanged them already (`contrast`).
        In training mode the (gathered) keys join the queue after the loss is computed.
        """
        extra = self.queue.keys() if self.queue is not None else None
        result = contrast(anchors, keys, self.temperature, self.tile_size, self.gather, extra, sizes)
        if self.queue is not None and self.training:
            self.queue.enqueue(result.keys)
        return result


def build_infonce(loss_cfg, dim: int) -> InfoNCE:
    """InfoNCE from a LossConfig and the feature dimension (ModelConfig.feature_dim)."""
    return InfoNCE(
        loss_cfg.temperature, loss_cfg.tile_size, loss_cfg.gather_across_ranks, loss_cfg.key_queue_size, dim
    )
