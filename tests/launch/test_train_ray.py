"""Pretraining on a local Ray (127.0.0.1): 2 Ray Train workers, DeepSpeed ZeRO-2, one worker killed midway.

One run covers the issue's test: the synthetic shards are trained for STEPS steps by two
TorchTrainer workers with ZeRO-2; when the checkpoint of step KILL_AFTER is complete, one worker
process is killed (SIGKILL, as a lost node or the OOM killer would). Ray must restart the worker
group, the run must resume from the newest checkpoint in the same run directory and reach STEPS;
the loss stays finite and goes down; both ranks end with identical parameters; and MLflow holds
one run (the id recorded before the kill) whose metric history covers the steps before and after.
A run that fails on every try is retried `dist.max_failures` times and then raises LaunchError.
"""

from __future__ import annotations

import math
import re

import pytest

from hvdistill.tracking import metric_history, run_record
from launch.train import LaunchError, train_on_ray
from tests.launch.ranks import WorkerKiller, params_file
from tests.train.helpers import tiny_train_config

STEPS = 12
EVERY = 3  # train.checkpoint_every
KILL_AFTER = 3  # kill once checkpoints/step-000003 is complete


@pytest.mark.slow
def test_two_zero2_workers_survive_a_killed_worker_and_keep_one_mlflow_run(launch_shards, tmp_path, capfd):
    out = tmp_path / "runs"
    cfg = tiny_train_config(
        launch_shards,
        "dist.num_workers=2",
        "dist.zero_stage=2",
        "dist.max_failures=2",
        f"train.max_steps={STEPS}",
        f"train.checkpoint_every={EVERY}",
        "train.log_every=1",
        "train.eval_batches=1",
        f"train.output_dir={out}",
        "train.run_name=zero2-kill",
        "tracking.enabled=true",
    )
    run_dir, storage = out / "zero2-kill", out / "ray" / "zero2-kill"  # the default dist.storage_path
    killer = WorkerKiller(str(storage), KILL_AFTER)
    killer.start()
    try:
        result = train_on_ray(cfg, entry="tests.launch.ranks:run_recording_params")
    finally:
        killer.stop.set()
        killer.join()
    logs = capfd.readouterr()
    text = logs.out + logs.err

    assert killer.victim is not None, "no Ray Train worker was killed (checkpoint never appeared?)"
    assert f"resuming at step {KILL_AFTER} from {storage / f'step-{KILL_AFTER:06d}'}" in text, text[-4000:]
    assert result.run_dir == run_dir and result.steps == STEPS and result.storage == str(storage)
    assert result.checkpoint == str(storage / f"step-{STEPS:06d}")
    assert result.backbone == str(storage / "backbone.pt") and (run_dir / "backbone.pt").is_file()

    digests = {params_file(run_dir, rank).read_text() for rank in (0, 1)}
    assert len(digests) == 1, "the two ranks ended with different parameters"

    assert result.tracking_run_id == killer.run_id_before  # one MLflow run across the restart
    record = run_record(result.tracking_uri, result.tracking_run_id)
    assert record["status"] == "FINISHED" and record["tags"].get("hvdistill.resumes") == "1"
    history = metric_history(result.tracking_uri, result.tracking_run_id, "loss/total")
    steps = {step for step, _ in history}
    assert steps == set(range(1, STEPS + 1)), steps  # before the kill, after it, nothing missing
    losses = [value for _, value in history]
    assert all(math.isfinite(v) for v in losses)
    first, last = losses[:3], [v for s, v in history if s > STEPS - 3]
    assert sum(last) / len(last) < sum(first) / len(first), history


@pytest.mark.slow
def test_a_run_that_keeps_failing_is_retried_max_failures_times_then_raises(tmp_path, capfd):
    empty = tmp_path / "no-shards"
    empty.mkdir()
    cfg = tiny_train_config(
        empty, "dist.max_failures=1", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=doomed"
    )
    with pytest.raises(LaunchError, match="doomed failed for good") as err:
        train_on_ray(cfg)
    text = capfd.readouterr()
    line = re.escape(f"hvdistill pretrain: run directory {tmp_path / 'runs' / 'doomed'}")
    attempts = set(re.findall(r"RayTrainWorker pid=(\d+)\)\S* " + line, text.out + text.err))
    assert len(attempts) == 2, text.out[-3000:]  # the first try and one restart, each a new worker
    assert str(empty) in str(err.value)  # the worker's own error reaches the driver
