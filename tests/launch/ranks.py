"""Helpers of the Ray Train tests: a run entry recording each rank's final parameters, a worker killer.

`launch.train.train_on_ray(cfg, entry="tests.launch.ranks:run_recording_params")` runs
`hvdistill.train.run.run` unchanged on every Ray Train worker; the only addition is that, when
the loop returns, each rank writes the SHA-256 of its module's parameters (name and bytes, in
name order, gathered first so ZeRO-3 would compare whole tensors too) to
`<run dir>/params-rank-<r>.sha256`, so a test can check that the ranks ended identical.
`WorkerKiller` SIGKILLs one Ray Train worker of this process's Ray once a checkpoint is complete
in the run's storage (every file its meta.json lists is there), as a lost node would.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from hvdistill.storage import Location, StorageError

KILL_WAIT_S = 420.0  # worker start + DeepSpeed init + a few steps, on two shared cores


def params_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"params-rank-{rank}.sha256"


def run_recording_params(cfg: Any, hooks: Any) -> Any:
    import hvdistill.train.run as run_module

    loop_train = run_module.train

    def train_and_record(job: Any) -> dict[str, float]:
        last = loop_train(job)
        module = job.engine.module
        digest = hashlib.sha256()
        for name, p in sorted(module.named_parameters()):  # ZeRO 0-2: every rank holds them all
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").contiguous().numpy().tobytes())
        params_file(job.run_dir, job.ctx.rank).write_text(digest.hexdigest())
        return last

    run_module.train = train_and_record
    try:
        return run_module.run(cfg, hooks)
    finally:
        run_module.train = loop_train


class WorkerKiller(threading.Thread):
    """Kills one Ray Train worker of this process's local Ray once a checkpoint is in the run's storage."""

    def __init__(self, storage: str, step: int):
        super().__init__(daemon=True)
        self.checkpoint = Location(storage) / f"step-{step:06d}"
        self.tracking_file = Location(storage) / "tracking.json"
        self.victim: int | None = None
        self.run_id_before: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        deadline = time.monotonic() + KILL_WAIT_S
        while not checkpoint_complete(self.checkpoint):
            if self.stop.wait(0.2) or time.monotonic() > deadline:
                return
        self.run_id_before = json.loads(self.tracking_file.read_text())["run_id"]
        # only our own Ray's processes; a DataLoader worker forked by a Ray worker has the same
        # title, so the victim is a titled process whose parent is not titled (the raylet's child)
        titled = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.cmdline()[:1] == ["ray::RayTrainWorker"]:
                    titled[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in titled.values():
            try:
                if proc.ppid() not in titled:
                    proc.kill()
                    self.victim = proc.pid
                    return
            except psutil.NoSuchProcess:
                continue


def checkpoint_complete(checkpoint: Location) -> bool:
    """Whether every file the checkpoint's meta.json lists is in the storage (every rank uploaded)."""
    try:
        files = json.loads((checkpoint / "meta.json").read_text())["files"]
        return all((checkpoint / name).exists() for name in files)
    except (StorageError, OSError, ValueError, KeyError):
        return False
