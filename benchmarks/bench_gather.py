"""Benchmark: the gather's backward as a reduce-scatter (all_to_all) vs the all-reduce it replaced.

`hvdistill.dist.all_gather_with_grad`'s backward sums the gathered gradient (N rows over all ranks,
`--dim` floats each) over ranks and keeps each rank's own rows (`reduce_scatter_rows`). On W
loopback gloo ranks (one torch thread each), per method:
- bytes: what each rank writes while the call runs (Linux /proc/self/io wchar, sockets included),
  summed over ranks, and as a fraction of the all-reduce's;
- time: the slowest rank's wall time of the call (barrier before, all ranks), medians of
  interleaved repeats (all_reduce, all_to_all, reduce_scatter, all_reduce, ...);
- equality: max |difference| of every method's rows against the all-reduce's.
Methods: `all_reduce` (the backward before), `all_to_all` (the default on gloo), `reduce_scatter`
(gloo's own, which turns out to move the all-reduce's bytes: why it is not the default here).

    .venv/bin/python -m benchmarks.bench_gather [--ranks 2 3 --rows 4096 65536 --dim 64 --repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from hvdistill import dist
from hvdistill.train.engine import free_port

METHODS = ("all_reduce", "all_to_all", "reduce_scatter")
PROC_IO = Path("/proc/self/io")


def written() -> int:
    """Bytes this process has written so far (files and sockets); 0 where /proc is missing."""
    if not PROC_IO.exists():
        return 0
    return int(dict(line.split(": ") for line in PROC_IO.read_text().splitlines())["wchar"])


def measure(grad: torch.Tensor, sizes: list[int], method: str) -> tuple[torch.Tensor, float, int]:
    """(this rank's rows, slowest rank's seconds, bytes this rank wrote) of one reduce-scatter."""
    tdist.barrier()
    before, tic = written(), time.perf_counter()
    rows = dist.reduce_scatter_rows(grad, sizes, method)
    seconds, sent = time.perf_counter() - tic, written() - before
    slowest = torch.tensor([seconds])
    tdist.all_reduce(slowest, op=tdist.ReduceOp.MAX)
    return rows, float(slowest), sent


def worker(rank: int, world: int, port: int, rows: list[int], dim: int, repeats: int, queue) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for n in rows:
        sizes = [n] * world
        grad = torch.randn(sum(sizes), dim, generator=torch.Generator().manual_seed(rank))  # (N, dim)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        sent: dict[str, int] = {}
        out: dict[str, torch.Tensor] = {}
        measure(grad, sizes, "all_to_all")  # warm the connections
        for _ in range(repeats):
            for method in METHODS:
                out[method], seconds, sent[method] = measure(grad, sizes, method)
                times[method].append(seconds)
        totals = torch.tensor([sent[m] for m in METHODS], dtype=torch.float64)
        tdist.all_reduce(totals)  # bytes over all ranks
        diff = max(float((out[m] - out["all_reduce"]).abs().max()) for m in METHODS)
        if rank == 0:
            queue.put(
                (world, n, dim, {m: statistics.median(times[m]) for m in METHODS}, totals.tolist(), diff)
            )
    tdist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 65536], help="rows per rank")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    print(
        "| ranks | rows per rank | gathered MB | method | time (median) | bytes sent (all ranks) | ratios |"
    )
    print("|---|---|---|---|---|---|---|")
    for world in args.ranks:
        queue = ctx.SimpleQueue()
        mp.spawn(worker, args=(world, free_port(), args.rows, args.dim, args.repeats, queue), nprocs=world)
        while not queue.empty():
            w, n, dim, medians, totals, diff = queue.get()
            mb = w * n * dim * 4 / 2**20
            for i, method in enumerate(METHODS):
                ratio = totals[i] / totals[0] if totals[0] else float("nan")
                pace = medians[method] / medians["all_reduce"]
                print(
                    f"| {w} | {n:,} | {mb:.1f} | {method} | {medians[method] * 1e3:.1f} ms | "
                    f"{totals[i] / 2**20:.1f} MB | bytes {ratio:.2f}, time {pace:.2f} |"
                )
            print(f"<!-- ranks {w}, rows {n}: max |rows - all_reduce rows| = {diff:.1e} -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
