"""Losing a node is routine: a 2-node elastic pretraining run that finishes on the node that survives.

A real multi-node Ray cluster on 127.0.0.1 (tests/launch/cluster.py, Ray's own cluster_utils): a
head that runs no workers and two worker nodes (separate raylets) with one CPU each, so the 2 Ray
Train workers (`dist.num_workers=[1, 2]`) land on different nodes. The run's storage is a bucket of
the S3 endpoint, what a real cluster without shared disks uses. Once the checkpoint of step 2 is
in the store, one worker node is killed with everything it started. Ray Train restarts the group
on the node left, with 1 worker: the global batch stays 2 (micro-batch 1, now 2 accumulation
steps), the step count continues from the checkpoint, and the run keeps its one MLflow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hvdistill.storage import Location
from hvdistill.tracking import metric_history, run_record
from tests.helpers import REPO_ROOT, config_path
from tests.launch.cluster import local_cluster
from tests.launch.ranks import checkpoint_complete
from tests.train.helpers import TINY_TRAIN

STEPS, EVERY, KILL_AFTER = 6, 2, 2
RUN_S = 900.0


@pytest.mark.slow
def test_a_two_node_run_loses_a_node_and_finishes_on_the_other(launch_shards, s3_bucket, tmp_path):
    with local_cluster(worker_nodes=2, cpus=1) as cluster:
        storage = f"{s3_bucket}/runs"
        cmd = [sys.executable, "-m", "hvdistill.cli", "pretrain", config_path("tiny.yaml"), *TINY_TRAIN]
        cmd += [
            f"data.shards=[{launch_shards}]",
            "dist.num_workers=[1,2]",
            "dist.max_failures=2",
            f"dist.storage_path={storage}",
            f"train.output_dir={tmp_path / 'runs'}",
            "train.run_name=elastic",
            "train.global_batch=2",
            "train.micro_batch=1",
            f"train.max_steps={STEPS}",
            f"train.checkpoint_every={EVERY}",
            "train.log_every=1",
            "train.eval_batches=1",
            "tracking.enabled=true",
            "--ray",
            "--address",
            cluster.address,
        ]
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        with (tmp_path / "driver.log").open("w") as log:
            driver = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            checkpoint = Location(f"{storage}/elastic/step-{KILL_AFTER:06d}")
            deadline = time.monotonic() + RUN_S
            try:
                while not checkpoint_complete(checkpoint):
                    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-5000:]
                    assert time.monotonic() < deadline, "no checkpoint reached the store"
                    time.sleep(0.5)
                run_id_before = json.loads(Location(f"{storage}/elastic/tracking.json").read_text())["run_id"]
                cluster.kill_node(cluster.workers[1])  # a machine: raylet, Ray Train worker, loaders
                rc = driver.wait(timeout=RUN_S)
            finally:
                if driver.poll() is None:
                    driver.kill()
        text = (tmp_path / "driver.log").read_text()
        assert rc == 0, text[-6000:]

    assert "launch: finished 6 steps" in text, text[-4000:]
    assert "resuming at step " in text, text[-4000:]
    meta = json.loads(Location(f"{storage}/elastic/step-{STEPS:06d}/meta.json").read_text())
    assert meta["world_size"] == 1 and meta["config"]["train"]["global_batch"] == 2
    assert meta["engine"]["global_steps"] == STEPS and meta["engine"]["global_samples"] == 2 * STEPS
    record = json.loads(Location(f"{storage}/elastic/tracking.json").read_text())
    assert record["run_id"] == run_id_before  # one MLflow run across the lost node
    assert run_record(record["uri"], record["run_id"])["status"] == "FINISHED"
    steps = {step for step, _ in metric_history(record["uri"], record["run_id"], "loss/total")}
    assert steps == set(range(1, STEPS + 1))
