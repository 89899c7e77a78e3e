"""Rank helpers and the gather-with-gradient that the contrastive losses build on.

Every function here behaves as the single-process identity when no process group is
initialised (rank 0 of a world of 1), so the same code runs in a unit test, on one device and
across many ranks.

`all_gather_counts` exchanges several per-rank counts (the row counts of every loss term) in
one collective and one host sync; `all_gather_sizes` is its one-count form.

`all_gather_with_grad` concatenates a tensor whose first dimension may differ between ranks
(sizes are gathered first unless given, rows padded to the largest size, all-gathered, and
trimmed). Its backward follows open_clip's `gather_features(..., gather_with_grad=True)` and
torch.distributed.nn's all_gather: every rank holds the gradient of its own loss with respect to
the whole gathered tensor; these are summed over ranks and each rank keeps the slice of its own
rows. After backward, the gradient of a rank's local rows is therefore d(sum over ranks of the
losses) / d(rows). Only a rank's own slice of the sum is needed, so the backward is a
reduce-scatter (`reduce_scatter_rows`), not an all-reduce. How (`reduce_scatter_method`):
- gloo: an all_to_all with each rank's row count as its split, then a sum over the W received
  pieces. gloo's own reduce_scatter moves an all-reduce's bytes: counted with the bytes each
  rank writes (tests/test_dist.py), it sends 2 (W - 1) / W x the gathered gradient, as the
  all-reduce does, while the all_to_all sends (W - 1) / W x it: half (docs/benchmarks.md);
- NCCL: its native ring reduce-scatter on rows padded to the largest rank's (NCCL's needs equal
  pieces), (W - 1) x largest rows sent per rank, when that is less than the ring all-reduce's
  2 (W - 1) / W x all rows, i.e. when the largest rank holds < 2 x the mean; otherwise (one rank
  holds most rows) the all-reduce, the backward's earlier form, is cheaper and is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

REDUCE_SCATTER_METHODS = ("all_to_all", "reduce_scatter", "all_reduce")


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


def all_gather_counts(
    counts: Sequence[int | torch.Tensor], device: torch.device | str = "cpu"
) -> list[list[int]]:
    """Every rank's `counts`, one list per count in rank order: out[j][r] is rank r's counts[j].

    K counts of every rank in ONE collective and one host sync (counts may be 0-d tensors still
    on the device, e.g. a mask's sum). [[c] for each c] without a process group.
    """
    local = torch.stack([torch.as_tensor(c, device=device).reshape(()).long() for c in counts])  # (K,)
    if not is_distributed():
        return [[c] for c in local.tolist()]
    every = local.new_empty(world_size() * local.numel())  # (W * K,), gloo takes the flat form
    dist.all_gather_single(every, local)
    return every.reshape(world_size(), -1).t().tolist()


def all_gather_sizes(n: int | torch.Tensor, device: torch.device | str = "cpu") -> list[int]:
    """First-dimension size of every rank's tensor, in rank order; [n] without a group."""
    return all_gather_counts([n], device)[0]


def all_gather_equal(x: torch.Tensor) -> torch.Tensor:
    """(W, *x.shape) every rank's `x` (equal shapes on all ranks), no gradient; x[None] without a group."""
    if not is_distributed():
        return x.detach()[None]
    out = x.new_empty(world_size() * x.numel())  # (W * numel,), gloo takes the flat form
    dist.all_gather_single(out, x.detach().reshape(-1).contiguous())
    return out.reshape(world_size(), *x.shape)


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(sum(sizes), ...) rows of all ranks, without autograd."""
    longest = max(max(sizes), 1)  # collectives on empty tensors are avoided
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def reduce_scatter_method(backend: str, sizes: list[int]) -> str:
    """How `reduce_scatter_rows` reduces on `backend` for these row counts (module docstring)."""
    if "nccl" not in backend:
        return "all_to_all"  # (W - 1) / W of the rows sent; gloo's reduce_scatter sends twice that
    world, total = len(sizes), sum(sizes)
    return "reduce_scatter" if world * max(sizes) < 2 * total else "all_reduce"


def reduce_scatter_rows(x: torch.Tensor, sizes: list[int], method: str | None = None) -> torch.Tensor:
    """(sizes[rank], ...) this rank's rows of the sum over ranks of x (sum(sizes), ...).

    Rows of rank r are x[sum(sizes[:r]) : sum(sizes[: r + 1])] on every rank. `method` (one of
    REDUCE_SCATTER_METHODS) defaults to `reduce_scatter_method`; all give the same sum up to the
    order of the float additions. x itself without a process group or with one rank.
    """
    if not is_distributed() or world_size() == 1:
        return x
    me, rest = rank(), x.shape[1:]
    if max(sizes) == 0:  # nothing to reduce on any rank (all ranks see the same sizes)
        return x[:0]
    method = method or reduce_scatter_method(dist.get_backend() if x.is_cuda else "gloo", sizes)
    x = x.contiguous()
    if method == "all_to_all":
        pieces = x.new_empty((world_size() * sizes[me], *rest))  # (W * n, ...) my rows from each rank
        dist.all_to_all_single(
            pieces, x, output_split_sizes=[sizes[me]] * world_size(), input_split_sizes=sizes
        )
        return pieces.reshape(world_size(), sizes[me], *rest).sum(dim=0)  # (n, ...)
    if method == "reduce_scatter":
        padded = x.new_zeros((world_size(), max(sizes), *rest))  # (W, longest, ...)
        for r, part in enumerate(x.split(sizes)):
            padded[r, : sizes[r]] = part
        mine = x.new_empty((max(sizes), *rest))  # (longest, ...)
        dist.reduce_scatter_single(mine, padded.reshape(-1, *rest), op=dist.ReduceOp.SUM)
        return mine[: sizes[me]]
    if method != "all_reduce":
        raise ValueError(f"reduce_scatter_rows: method {method!r} is not one of {REDUCE_SCATTER_METHODS}")
    total = x.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    start = sum(sizes[:me])
    return total[start : start + sizes[me]]


class _AllGatherWithGrad(torch.autograd.Function):
    """Variable-length all_gather whose backward reduce-scatters the gradient (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return reduce_scatter_rows(grad, ctx.sizes), None


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
    return _AllGatherWithGrad.apply(x, sizes)


def broadcast_text(text: str, device: torch.device | str = "cpu") -> str:
    """Rank 0's `text` on every rank (UTF-8 bytes in a tensor; nothing pickled); `text` without a group."""
    if not is_distributed():
        return text
    data = torch.tensor(list(text.encode()) if is_main() else [], dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    buf = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if is_main():
        buf.copy_(data)
    if int(length):
        dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode()


def all_gather_text(text: str, device: torch.device | str = "cpu") -> list[str]:
    """Every rank's `text`, in rank order (UTF-8 bytes gathered as tensors); [text] without a group."""
    if not is_distributed():
        return [text]
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    sizes = all_gather_sizes(data.numel(), device)
    gathered = _gather_padded(data.reshape(-1, 1), sizes).reshape(-1).cpu().tolist()
    out, start = [], 0
    for n in sizes:
        out.append(bytes(gathered[start : start + n]).decode())
        start += n
    return out
