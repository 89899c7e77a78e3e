"""A multi-node Ray cluster on one machine for the tests: a head and worker nodes, all on 127.0.0.1.

Built with Ray's own `ray.cluster_utils.Cluster`: every node is a separate raylet (with its own
object store and workers) registered with one GCS, as on a real cluster. `ray start` cannot
do this on one machine: Ray 2.60 refuses to join a second node while
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, and without that variable it moves every node to the
machine's external address, which is exactly what tests must not touch. This process only
starts the nodes (it is no Ray driver); drivers are subprocesses given `cluster.address`.

`kill_node` is a lost machine: the node's raylet and every process it started (its Ray Train
workers and their DataLoader workers) are SIGKILLed at once, with no graceful drain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers.gloo import free_port


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class LocalCluster:
    """A head that runs no training worker (0 CPUs) and worker nodes with `cpus` CPUs each."""

    def __init__(self, worker_nodes: int, cpus: int = 1):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
        from ray.cluster_utils import Cluster

        head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"}
        head["dashboard_port"] = free_port()  # not 8265: several clusters may share the machine
        self._cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        self.workers = [self._cluster.add_node(num_cpus=cpus) for _ in range(worker_nodes)]
        self._cluster.wait_for_nodes()
        self.address = self._cluster.address

    def kill_node(self, node: Any) -> list[int]:
        """SIGKILL a worker node's raylet and everything it started; returns the pids killed."""
        raylet = node.all_processes["raylet"][0].process.pid
        tree = _descendants(raylet)
        self._cluster.remove_node(node, allow_graceful=False)
        for proc in tree:
            try:
                proc.kill()
            except Exception:  # gone already: psutil.NoSuchProcess
                continue
        return [p.pid for p in tree]

    def shutdown(self) -> None:
        self._cluster.shutdown()


@contextmanager
def local_cluster(worker_nodes: int, cpus: int = 1) -> Iterator[LocalCluster]:
    cluster = LocalCluster(worker_nodes, cpus)
    try:
        yield cluster
    finally:
        cluster.shutdown()
