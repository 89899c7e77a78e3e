"""`hvdistill submit` against a real `ray start --head` on 127.0.0.1 with token authentication.

A tiny pretraining is submitted as a Ray job from another process (the CLI, as a user runs it),
with the repository uploaded as the job's working directory; the job runs `hvdistill pretrain
... --ray --address auto` on the cluster and must SUCCEED, its logs must name the run directory,
and `submit status` / `submit logs` must report it. `--no-follow` returns at once and `submit
stop` ends a job. A client without the token, or with a wrong one, gets a clear refusal.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.train.helpers import TINY_TRAIN

JOB_TIMEOUT_S = 540
STOP_WAIT_S = 120


def submit(
    head, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hvdistill.cli", "submit", *args, "--address", head.dashboard]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env or head.env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_submitted_pretraining_job_succeeds_and_names_its_run_directory(ray_head, launch_shards, tmp_path):
    out = tmp_path / "runs"
    overrides = [
        *TINY_TRAIN,
        f"data.shards=[{launch_shards}]",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "tracking.enabled=true",
    ]
    done = submit(ray_head, "pretrain", "configs/tiny.yaml", *overrides, timeout=JOB_TIMEOUT_S)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-5000:]
    job_id = re.search(r"submit: job (\S+) submitted", done.stdout).group(1)
    run_dir = Path(re.search(r"submit: run directory (\S+) \(on the cluster\)", done.stdout).group(1))
    assert run_dir.parent == out and f"submit: job {job_id} SUCCEEDED" in done.stdout
    assert f"launch: run directory {run_dir}" in done.stdout  # the job's own log, followed
    assert (run_dir / "config.yaml").is_file()  # the run ran on the cluster and wrote its directory

    status = submit(ray_head, "status", job_id)
    assert status.returncode == 0 and f"{job_id} SUCCEEDED" in status.stdout
    logs = submit(ray_head, "logs", job_id)
    assert logs.returncode == 0 and f"launch: run directory {run_dir}" in logs.stdout
    assert re.search(r"launch: finished 2 steps", logs.stdout), logs.stdout[-3000:]
    ui = f"mlflow ui --backend-store-uri sqlite:///{run_dir / 'mlruns.db'} --host 127.0.0.1"
    assert re.search(r"launch: MLflow run \w+; to see it: ", logs.stdout) and ui in logs.stdout


@pytest.mark.slow
def test_a_client_without_the_token_or_with_a_wrong_one_is_refused_with_the_fix(ray_head, tmp_path):
    no_token = {**ray_head.env, "HOME": str(tmp_path)}  # no ~/.ray/auth_token either
    no_token.pop("RAY_AUTH_TOKEN_PATH")
    done = submit(ray_head, "status", "raysubmit_none", env=no_token)
    assert done.returncode == 2 and "RAY_AUTH_TOKEN" in done.stderr, done.stderr[-2000:]
    wrong = {**no_token, "RAY_AUTH_TOKEN": "0" * 64}
    done = submit(ray_head, "status", "raysubmit_none", env=wrong)
    assert done.returncode == 2 and "RAY_AUTH_TOKEN" in done.stderr, done.stderr[-2000:]
    known = submit(ray_head, "status", "raysubmit_none")  # with the token: the job is unknown
    assert known.returncode == 1 and "raysubmit_none" in known.stderr, known.stderr[-2000:]


@pytest.mark.slow
def test_no_follow_returns_the_job_id_and_stop_ends_the_job(ray_head, launch_shards, tmp_path):
    long_run = [
        *TINY_TRAIN,
        f"data.shards=[{launch_shards}]",
        f"train.output_dir={tmp_path}",
        "train.max_steps=10000",
    ]
    done = submit(ray_head, "pretrain", "configs/tiny.yaml", *long_run, "--no-follow")
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = re.search(r"submit: job (\S+) submitted", done.stdout).group(1)
    assert f"hvdistill submit logs {job_id}" in done.stdout  # how to follow it later
    stopped = submit(ray_head, "stop", job_id)
    assert stopped.returncode == 0 and f"{job_id}: stop requested" in stopped.stdout, stopped.stdout
    deadline = time.monotonic() + STOP_WAIT_S
    while True:
        status = submit(ray_head, "status", job_id)
        if f"{job_id} STOPPED" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    assert f"{job_id} STOPPED" in status.stdout, status.stdout
