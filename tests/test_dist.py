"""hvdistill/dist.py: single-process no-ops, and all_gather_with_grad across 2 gloo processes."""

import os

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from hvdistill import dist
from tests.helpers.gloo import free_port, init_gloo

SIZES = [3, 0, 5]  # unequal, including an empty rank


def test_no_process_group_is_the_identity():
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    dist.barrier()
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.all_gather_sizes(4) == [4]
    assert dist.all_reduce_sum(x) is x


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
    torch.save(
        {
            "gathered": gathered.detach(),
            "grad": x.grad,
            "sizes": torch.tensor(dist.all_gather_sizes(x.shape[0])),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    tdist.destroy_process_group()


def test_all_gather_with_grad_unequal_sizes(tmp_path):
    world = len(SIZES)
    mp.spawn(_gather_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    everything = torch.cat([_rows(r) for r in range(world)])
    summed_weights = sum(_weights(r) for r in range(world))  # d(sum of losses)/d(gathered)
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert out["sizes"].tolist() == SIZES
        torch.testing.assert_close(out["gathered"], everything)
        start = sum(SIZES[:r])
        torch.testing.assert_close(out["grad"], summed_weights[start : start + SIZES[r]])
