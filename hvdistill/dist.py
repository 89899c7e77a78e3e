"""Rank helpers and the gather-with-gradient that the contrastive losses build on.

Every function here behaves as the single-process identity when no process group is
initialised (rank 0 of a world of 1), so the same code runs in a unit test, on one device and
across many ranks.

`all_gather_with_grad` concatenates a tensor whose first dimension may differ between ranks
(sizes are gathered first, rows padded to the largest size, all-gathered, and trimmed). Its
backward follows open_clip's `gather_features(..., gather_with_grad=True)`: every rank holds
the gradient of its own loss with respect to the whole gathered tensor; these are summed over
ranks (all_reduce) and each rank keeps the slice of its own rows. After backward, the gradient
of a rank's local rows is therefore d(sum over ranks of the losses) / d(rows).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and always without a process group)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks (a new tensor, no gradient); `x` itself without a process group."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """First-dimension size of every rank's tensor, in rank order; [n] without a group."""
    if not is_distributed():
        return [n]
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(sum(sizes), ...) rows of all ranks, without autograd."""
    longest = max(max(sizes), 1)  # collectives on empty tensors are avoided
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """Variable-length all_gather whose backward all-reduces and slices the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], offset: int) -> torch.Tensor:
        ctx.rows = (offset, offset + x.shape[0])
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop], None, None


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """(sum of every rank's rows, ...) concatenation of `x` over ranks in rank order.

    `sizes` (every rank's first dimension, as from `all_gather_sizes`) saves one collective
    when the caller already has them. Rows of rank r start at sum(sizes[:r]). Differentiable:
    see the module docstring for the backward. Identity without a process group.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_gather_sizes(x.shape[0], x.device)
    if sizes[rank()] != x.shape[0]:
        raise ValueError(
            f"all_gather_with_grad: sizes[{rank()}]={sizes[rank()]} but the local "
            f"tensor has {x.shape[0]} rows; pass this rank's own row count"
        )
    offset = sum(sizes[: rank()])
    return _AllGatherWithGrad.apply(x, sizes, offset)
