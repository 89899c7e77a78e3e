"""No shared disk: a 2-worker Ray Train run with its data, checkpoints, outputs and tracking off the nodes.

The shards and the run's storage are in a bucket on a real S3 endpoint (moto on 127.0.0.1),
tracking an `mlflow server` whose artifacts are proxied to the same store (the recipe of
docs/cluster.md). A run is
killed after a checkpoint (one worker SIGKILLed, no restarts allowed), then everything local is
deleted: its run directory and every file of that Ray. A fresh Ray given the same run name and
storage resumes from the object store alone and ends with exactly the parameters of a run that
was never interrupted, in one MLflow run whose metric history has every step once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hvdistill.storage import Location
from hvdistill.tracking import metric_history, run_record
from launch.train import LaunchError, train_on_ray
from tests.helpers.mlflow_server import mlflow_server
from tests.launch.ranks import WorkerKiller, params_file
from tests.train.helpers import tiny_train_config

STEPS, EVERY, KILL_AFTER = 6, 2, 2


def _config(shards: str, out: Path, name: str, storage: str, tracking: str):
    return tiny_train_config(
        shards,
        "dist.num_workers=2",
        "dist.max_failures=0",  # no restart on this Ray: the resume below starts from nothing local
        f"dist.storage_path={storage}",
        f"train.output_dir={out}",
        f"train.run_name={name}",
        f"train.max_steps={STEPS}",
        f"train.checkpoint_every={EVERY}",
        "train.log_every=1",
        "train.eval_batches=1",
        "train.deterministic=true",
        "precision.image_dtype=float32",
        "tracking.enabled=true",
        f"tracking.uri={tracking}",
    )


@contextmanager
def fresh_ray_files() -> Iterator[Path]:
    """Every file of the Ray started inside goes under a new directory, deleted afterwards (a node's
    local state); the path is short because Ray's unix sockets live there (107-byte limit)."""
    root = Path(tempfile.mkdtemp(prefix="hvray-", dir="/tmp"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root)
    try:
        yield root
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(root, ignore_errors=True)


def _digests(run_dir: Path) -> list[str]:
    return [params_file(run_dir, rank).read_text() for rank in (0, 1)]


@pytest.mark.slow
def test_a_run_that_lost_every_local_file_resumes_from_object_storage_alone(
    launch_shards, s3_bucket, tmp_path, capfd
):
    out, storage = tmp_path / "runs", f"{s3_bucket}/ray"
    shards = f"{s3_bucket}/shards"  # the data too: nothing the run reads or writes is on a local disk
    for path in sorted(launch_shards.iterdir()):
        if path.is_file():  # the tars and manifest.json
            (Location(shards) / path.name).upload(path)
    entry = "tests.launch.ranks:run_recording_params"
    with mlflow_server(tmp_path / "mlflow", artifacts=f"{s3_bucket}/mlflow") as tracking:
        with fresh_ray_files():
            straight = train_on_ray(_config(shards, out, "straight", storage, tracking), entry=entry)
        cfg = _config(shards, out, "lost", storage, tracking)
        killer = WorkerKiller(f"{storage}/lost", KILL_AFTER)
        killer.start()
        try:
            with fresh_ray_files() as ray_files, pytest.raises(LaunchError, match="lost failed for good"):
                train_on_ray(cfg, entry=entry)
        finally:
            killer.stop.set()
            killer.join()
        assert killer.victim is not None, "no worker was killed (the checkpoint never reached the store?)"
        shutil.rmtree(out / "lost")  # the node's disk is gone; its Ray files went with fresh_ray_files
        assert not ray_files.exists() and not (out / "lost").exists()
        capfd.readouterr()
        with fresh_ray_files():
            resumed = train_on_ray(cfg, entry=entry)
        text = "".join(capfd.readouterr())

        assert resumed.steps == STEPS and resumed.storage == f"{storage}/lost"
        assert "hvdistill pretrain: resuming at step " in text, text[-4000:]
        assert f"resuming at step {STEPS}" not in text  # it resumed mid-run, not from a finished one
        assert _digests(resumed.run_dir) == _digests(straight.run_dir), "resumed parameters differ"
        assert len(set(_digests(straight.run_dir))) == 1  # and the ranks agree
        assert Location(resumed.backbone).is_file() and resumed.backbone.startswith(s3_bucket)

        assert resumed.tracking_run_id == killer.run_id_before  # one MLflow run across the lost node
        assert run_record(tracking, resumed.tracking_run_id)["status"] == "FINISHED"
        steps = [step for step, _ in metric_history(tracking, resumed.tracking_run_id, "loss/total")]
        assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps
