"""hvdistill/dist.py: single-process no-ops; the gather, its reduce-scatter backward and the count
exchange across 3 gloo processes, with the bytes each rank sends counted (Linux /proc/self/io)."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from hvdistill import dist
from tests.helpers.gloo import fork_ranks, free_port, init_gloo

SIZES = [3, 0, 5]  # unequal, including an empty rank
BYTE_ROWS, BYTE_DIM = 512, 64  # the byte count gathers SIZES x 512 rows of 64 floats (1 MiB in all)
PROC_IO = Path("/proc/self/io")  # wchar: bytes this process wrote, sockets included (gloo's TCP)


def test_no_process_group_is_the_identity():
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    dist.barrier()
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.all_gather_sizes(4) == [4]
    assert dist.all_gather_counts([2, torch.tensor(5)]) == [[2], [5]]
    assert torch.equal(dist.all_gather_equal(x), x.detach()[None])
    assert dist.reduce_scatter_rows(x, [4]) is x
    assert dist.all_reduce_sum(x) is x
    assert dist.all_gather_text("a") == ["a"] and dist.broadcast_text("b") == "b"


def test_the_reduce_scatter_is_chosen_by_backend_and_balance():
    assert dist.reduce_scatter_method("gloo", [9, 0, 1]) == "all_to_all"  # never more bytes
    assert dist.reduce_scatter_method("nccl", [4, 4]) == "reduce_scatter"  # balanced: half the bytes
    assert dist.reduce_scatter_method("nccl", [5, 3, 4]) == "reduce_scatter"  # 3 x 5 < 2 x 12
    assert dist.reduce_scatter_method("nccl", [8, 2, 2]) == "all_reduce"  # padded to 8: no fewer bytes


def _rows(rank: int) -> torch.Tensor:
    """(SIZES[rank], 2) distinct rows of each rank."""
    start = sum(SIZES[:rank])
    return torch.arange(start * 2, (start + SIZES[rank]) * 2, dtype=torch.float32).reshape(-1, 2)


def _weights(rank: int) -> torch.Tensor:
    """(sum(SIZES), 2) per-rank loss weights over the gathered rows."""
    return torch.arange(sum(SIZES) * 2, dtype=torch.float32).reshape(-1, 2) * (rank + 1)


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_gloo(rank, world, port)
    x = _rows(rank).requires_grad_()
    gathered = dist.all_gather_with_grad(x)
    (gathered * _weights(rank)).sum().backward()
    texts = dist.all_gather_text("ränk" * rank)  # unequal lengths, one empty, non-ASCII
    said = dist.broadcast_text("from rank 0 ✓" if rank == 0 else "ignored")
    assert texts == ["", "ränk", "ränkränk"][:world] and said == "from rank 0 ✓", (texts, said)
    weights = _weights(rank)
    torch.save(
        {
            "gathered": gathered.detach(),
            "grad": x.grad,
            "sizes": torch.tensor(dist.all_gather_sizes(x.shape[0])),
            "counts": torch.tensor(dist.all_gather_counts([rank, torch.tensor(10 * rank), x.shape[0]])),
            "equal": dist.all_gather_equal(torch.tensor([rank, 0.5])),
            **{m: dist.reduce_scatter_rows(weights, SIZES, m) for m in dist.REDUCE_SCATTER_METHODS},
            "bytes": _backward_bytes(rank) if PROC_IO.exists() else torch.zeros(0),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    tdist.destroy_process_group()


def _written() -> int:
    """Bytes this process has written so far (files and sockets)."""
    return int(dict(line.split(": ") for line in PROC_IO.read_text().splitlines())["wchar"])


def _bytes_of(step) -> int:
    """Bytes this rank writes while `step` runs on every rank (barriers around it, their bytes removed)."""
    dist.barrier()
    before = _written()
    step()
    dist.barrier()
    during = _written() - before
    before = _written()
    dist.barrier()
    return during - (_written() - before)


def _backward_bytes(rank: int) -> torch.Tensor:
    """[gather backward (the default: all_to_all on gloo), all-reduce, gloo's reduce_scatter] bytes."""
    sizes = [n * BYTE_ROWS for n in SIZES]
    x = torch.randn(sizes[rank], BYTE_DIM, requires_grad=True)  # (n, 64)
    gathered = dist.all_gather_with_grad(x, sizes)  # (sum(sizes), 64)
    grad = torch.randn_like(gathered)
    counted = [_bytes_of(lambda: gathered.backward(grad))]
    for method in ("all_reduce", "reduce_scatter"):
        counted.append(_bytes_of(lambda m=method: dist.reduce_scatter_rows(grad, sizes, m)))
    return torch.tensor(counted, dtype=torch.float64)


def test_all_gather_with_grad_unequal_sizes(tmp_path):
    world = len(SIZES)
    args = (world, free_port(), str(tmp_path))
    fork_ranks(_gather_worker, world, args, timeout=120)
    everything = torch.cat([_rows(r) for r in range(world)])
    summed_weights = sum(_weights(r) for r in range(world))  # d(sum of losses)/d(gathered)
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert out["sizes"].tolist() == SIZES
        assert out["counts"].tolist() == [[0, 1, 2], [0, 10, 20], SIZES]
        assert torch.equal(out["equal"], torch.tensor([[0, 0.5], [1, 0.5], [2, 0.5]]))
        torch.testing.assert_close(out["gathered"], everything)
        start = sum(SIZES[:r])
        torch.testing.assert_close(out["grad"], summed_weights[start : start + SIZES[r]])
        for method in dist.REDUCE_SCATTER_METHODS:  # each way of reducing gives the same rows
            torch.testing.assert_close(out[method], summed_weights[start : start + SIZES[r]])
    if not PROC_IO.exists():
        pytest.skip("no /proc/self/io here: bytes not counted")
    sent = torch.stack(
        [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["bytes"] for r in range(world)]
    )
    gathered_bytes = sum(SIZES) * BYTE_ROWS * BYTE_DIM * 4
    # all_to_all: rank r sends the rows of the others, (W - 1) x the gradient over all ranks; the
    # ring all-reduce sends 2 (W - 1) / W x it from every rank, 2 (W - 1) x it in all: twice that
    torch.testing.assert_close(
        sent[:, 0].sum(), torch.tensor((world - 1) * gathered_bytes, dtype=torch.float64), rtol=0.02, atol=0
    )
    torch.testing.assert_close(
        sent[:, 0].sum() / sent[:, 1].sum(), torch.tensor(0.5, dtype=torch.float64), rtol=0.03, atol=0
    )
    assert (sent[:, 0] < sent[:, 1]).all(), sent  # and less on every rank
    assert (sent[:, 2] >= 0.95 * sent[:, 1]).all(), sent  # gloo's reduce_scatter saves nothing
