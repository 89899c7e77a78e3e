"""A real S3 endpoint for tests and benchmarks: moto's S3 server on 127.0.0.1, optionally slowed down.

`S3Server` serves moto's S3 implementation over HTTP with werkzeug on a free loopback port (the
same wire protocol a user's S3, MinIO or Ceph speaks), with an optional delay added to every
request (`latency_s`) to stand in for a remote store. Clients reach it the way they reach any
S3-compatible endpoint: through the standard variables `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION` (`server.env()`), which processes started
afterwards (Ray workers, DataLoader workers, subprocesses) inherit. Buckets are created with
boto3, a test-only dependency; the project itself talks to the store only through
hvdistill/storage.py. `requests(...)` lists the requests served so far (to count a reader's
GETs) and `slowed(seconds)` adds a delay for a while (fast uploads, then slow reads).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"
CREDENTIALS = {  # moto accepts any; fixed so a test can reproduce a request by hand
    "AWS_ACCESS_KEY_ID": "hvdistill-test",
    "AWS_SECRET_ACCESS_KEY": "hvdistill-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class _Latency:
    """WSGI middleware sleeping `seconds` before every request (time to first byte of a remote store)."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in arrival order

    def __call__(self, environ, start_response):
        self.seen.append((environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")))
        if self.seconds > 0:
            time.sleep(self.seconds)
        return self.app(environ, start_response)


class S3Server:
    """moto's S3 on 127.0.0.1:<free port> in a thread of this process (see the module docstring)."""

    def __init__(self, latency_s: float = 0.0):
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        app = DomainDispatcherApplication(create_backend_app)
        self._latency = _Latency(app, latency_s)
        self._server = make_server(
            LOOPBACK, 0, self._latency, threaded=True, request_handler=MotoRequestHandler
        )
        self.port = self._server.port
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """The variables a client needs to reach this endpoint."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        """A boto3 S3 client of this endpoint (tests only: bucket creation and inspection)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def new_bucket(self, prefix: str = "hvd") -> str:
        """A fresh, empty bucket; returns its name."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in `bucket`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def requests(self, method: str = "", prefix: str = "") -> list[str]:
        """Paths (`/<bucket>/<key>`) of the requests served so far, of `method` and under `prefix`."""
        return [p for m, p in list(self._latency.seen) if m.startswith(method) and p.startswith(prefix)]

    @contextmanager
    def slowed(self, seconds: float) -> Iterator[None]:
        """Add `seconds` to every request for the duration of the block (then the delay before)."""
        before, self._latency.seconds = self._latency.seconds, seconds
        try:
            yield
        finally:
            self._latency.seconds = before

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def s3_environment(server: S3Server) -> Iterator[None]:
    """Point this process (and what it starts) at `server`; the previous variables come back after."""
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class S3ServerProcess(S3Server):
    """moto's S3 in a process of its own (`python -m moto.server`): a store whose objects are not
    shared with `S3Server`s of this process (moto keeps its state per process)."""

    START_S = 60.0  # a cold interpreter importing moto on a loaded machine

    def __init__(self) -> None:  # noqa: D107 - replaces the in-process server entirely
        import socket
        import subprocess
        import sys
        import urllib.request

        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        command = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.START_S
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto.server did not start on {self.endpoint}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except Exception:
            self._process.kill()
            self._process.wait(10)
