"""A real `mlflow server` on 127.0.0.1 for tests: sqlite backend, artifacts proxied to a folder or a bucket.

`mlflow_server(folder, artifacts=...)` starts `mlflow server --host 127.0.0.1` from this venv the
way docs/cluster.md tells users to run one on a cluster's head (`--artifacts-destination` a local
folder or `s3://bucket/prefix`, reached with the AWS_* variables of this process), waits until
`/health` answers, yields its URI and stops it (its whole process group) afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_S = 90.0  # a cold server on two loaded cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, artifacts: str = "") -> Iterator[str]:
    """A running server whose store is `folder`/mlflow.db; yields http://127.0.0.1:PORT."""
    from hvdistill.config import TrackingConfig
    from hvdistill.tracking import prepare_tracking

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    prepare_tracking(TrackingConfig(uri=f"sqlite:///{db}", experiment="local"), folder)  # migrated once
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{db}"]
    cmd += ["--artifacts-destination", artifacts or str(folder / "artifacts")]
    env = dict(os.environ)
    if "AWS_ENDPOINT_URL" in env:  # mlflow's boto3 client for an S3-compatible endpoint
        env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, f"mlflow server did not answer within {START_S:.0f} s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
