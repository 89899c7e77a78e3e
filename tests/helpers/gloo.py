"""Loopback gloo process groups for tests that fork ranks (torch.multiprocessing).

Ranks are forked, not spawned: they inherit the test process's imports (spconv and deepspeed take
seconds each). `fork_ranks` collects the test process's garbage before it forks and freezes what
is left for the children: a gloo process group left unreachable in a reference cycle by an earlier
test would otherwise be collected inside a child, whose destructor then waits forever for gloo
threads that exist only in the parent (a hang seen in CI).
"""

from __future__ import annotations

import gc
import os
import socket
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """A loopback gloo group for spawned test workers."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def fork_ranks(fn, nprocs: int, args: tuple, timeout: float) -> None:
    """Run fn(rank, *args) on `nprocs` forked processes; fail (killing them) past `timeout` seconds."""
    gc.collect()  # garbage with native threads dies here, where its threads live
    gc.freeze()  # and nothing inherited is collected in a child
    try:
        context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")
    finally:
        gc.unfreeze()
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nprocs} ranks did not finish within {timeout:.0f} s (a hang?)")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
