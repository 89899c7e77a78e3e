"""Fixtures of the Ray launch tests: shards of the session world, and a `ray start` head on loopback.

The head is started the way a user starts one (`ray start --head`, token authentication on, the
token in a file of the test's own) but with `--block`, and stopped by ending that process: `ray
stop` would stop every Ray on the machine, including other users' clusters. After the stop the
fixture checks that every process the head had started is gone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.gloo import free_port
from tests.train.helpers import shard_world

HEAD_START_S = 120.0  # a cold head on two busy cores took ~11 s; generous for a loaded machine
STOP_S = 60.0
# every port a head opens by default at a fixed number (6379, 8265, 10001, 52365, ...)
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


@pytest.fixture(scope="package")
def launch_shards(nuscenes_root, tmp_path_factory) -> Path:
    """Train + val shards of the session's synthetic world (6 + 3 samples, two cameras)."""
    return shard_world(nuscenes_root, tmp_path_factory.mktemp("launch-shards"))


@dataclass
class RayHead:
    """A running `ray start --head --block` on 127.0.0.1 and how a client reaches it."""

    process: subprocess.Popen
    dashboard: str  # http://127.0.0.1:PORT, the job server
    gcs: str  # 127.0.0.1:PORT
    token_path: Path
    env: dict[str, str]  # a client environment that finds the token (and the venv's python first)


def _ray_processes(root_pid: int) -> list:
    import psutil

    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_ready(head: RayHead, log: Path) -> None:
    """Until the job server answers an authenticated request (or the head died / timed out)."""
    from launch.submit import SubmitError, client

    deadline = time.monotonic() + HEAD_START_S
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
    try:
        while True:
            if head.process.poll() is not None:
                raise RuntimeError(f"ray start exited {head.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                client(head.dashboard)
                return
            except SubmitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    finally:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


def _stop(head: RayHead) -> list[str]:
    """End the head's process; return the processes it had started that outlived the grace period."""
    import psutil

    started = _ray_processes(head.process.pid)
    head.process.terminate()
    try:
        head.process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        head.process.kill()
        head.process.wait(STOP_S)
    _, alive = psutil.wait_procs(started, timeout=STOP_S)
    left = [f"{p.pid} {p.name()}" for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # ours: do not leave them behind even when the test fails
        p.kill()
    return left


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> RayHead:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs, token auth, free ports; stopped after."""
    tmp = tmp_path_factory.mktemp("ray-head")
    token_path = tmp / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    ports = {flag: free_port() for flag in PORT_FLAGS}
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is ours
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
    }
    command = [f"{venv_bin}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    # Ray's unix sockets live under --temp-dir and a path may not exceed 107 bytes: pytest's
    # tmp paths are too long, so the head gets a short directory of its own under /tmp
    ray_tmp = Path(tempfile.mkdtemp(prefix="hvray-", dir="/tmp"))
    command += ["--num-cpus", "2", "--dashboard-host", "127.0.0.1", "--temp-dir", str(ray_tmp)]
    command += [str(x) for flag, port in ports.items() for x in (flag, port)]
    log = tmp / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    client_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}  # submit must not need it
    head = RayHead(
        process=process,
        dashboard=f"http://127.0.0.1:{ports['--dashboard-port']}",
        gcs=f"127.0.0.1:{ports['--port']}",
        token_path=token_path,
        env=client_env,
    )
    try:
        _wait_ready(head, log)
        yield head
    finally:
        left = _stop(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not left, f"processes of the Ray head still running after it stopped: {left}"
