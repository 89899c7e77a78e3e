"""The one place a driver joins a Ray cluster or starts a local one on 127.0.0.1.

`ray_session(address, num_cpus=..., num_gpus=...)` is used by `pretrain --ray`, `sweep` and the
demo. A Ray already initialised in this process (a caller's, e.g. the demo's one session for
every stage) is used as it is and left running, so chained stages share one cluster instead of
starting one each. A local Ray gets the dashboard on 127.0.0.1 and a free port: Ray Train's
cleanup actor queries the state API it serves.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def keep_on_loopback() -> None:
    """RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (unless set): else Ray 2.60 swaps 127.0.0.1 for the
    machine's external address. Ray reads it when first imported, so say so if that was earlier."""
    if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in os.environ:
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        print(
            "launch: warning: ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; "
            "the local Ray may use the machine's external address; set it before importing ray",
            file=sys.stderr,
        )


@contextmanager
def ray_session(address: str | None, *, num_cpus: int, num_gpus: int = 0) -> Iterator[None]:
    """Connect to `address`, or start a local Ray on 127.0.0.1 with `num_cpus` / `num_gpus`;
    shut down after only what this call started."""
    if not address:
        keep_on_loopback()
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(
            address="local",  # a new cluster: never attach to another Ray running on this machine
            num_cpus=max(1, num_cpus),
            _node_ip_address=LOOPBACK,
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=free_port(),
            **({"num_gpus": num_gpus} if num_gpus else {}),
        )
    try:
        yield
    finally:
        ray.shutdown()
