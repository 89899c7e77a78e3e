"""Exact resume from a run's storage alone: checkpoints staged per rank and persisted to S3, the local
run directory lost, the run resumed on a "new node" from the object store, bitwise equal to a
straight run.

The launcher's part (Ray Train uploading each rank's staged directory into `step-N` of the run's
storage) is played by a hook that uploads the staged files through hvdistill/storage.py, so the
run's own storage mode (staging, probe, mirrored files, resume from storage, MLflow run continued
from the mirrored tracking.json) is tested in one process; tests/launch/test_train_storage.py runs
the same through Ray Train.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hvdistill.storage import Location
from hvdistill.train import checkpoint as ckpt
from hvdistill.train.run import RunHooks, run
from tests.train.helpers import Crash, exact_resume_config

K = 4


def _config(shards: Path, out: Path, name: str, zero: int):
    return exact_resume_config(shards, out, name, zero, K)


def _persist(storage: Location, crash_at: int = 0):
    """The launcher's on_checkpoint: upload the staged part into <storage>/step-N, drop it locally."""

    def on_checkpoint(step: int, staged: Path) -> None:
        for file in sorted(staged.iterdir()):
            (storage / ckpt.step_name(step) / file.name).upload(file)
        shutil.rmtree(staged)
        if step == crash_at:
            raise Crash(f"stopped after the checkpoint of step {step}")

    return on_checkpoint


def _final_state(storage: Location, tmp: Path) -> dict[str, torch.Tensor]:
    final = storage / ckpt.step_name(K)
    model = torch.load(final.joinpath(ckpt.MODEL).download(tmp / "model.pt"), weights_only=True)
    rank = torch.load(final.joinpath(ckpt.rank_file(0)).download(tmp / "rank.pt"), weights_only=True)
    state = dict(model)
    state.update({f"loss.{k}": v for k, v in rank["loss"]["buffers"].items()})
    for i, s in rank["optimizer"].get("state", {}).items():
        state.update({f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return state


@pytest.mark.slow
def test_a_run_resumed_from_its_storage_alone_equals_the_straight_run(train_shards, tmp_path, s3_bucket):
    runs = tmp_path / "runs"
    straight_store, resumed_store = Location(f"{s3_bucket}/straight"), Location(f"{s3_bucket}/resumed")
    run(
        _config(train_shards, runs, "straight", 0),
        RunHooks(storage=str(straight_store), on_checkpoint=_persist(straight_store)),
    )
    hooks = RunHooks(storage=str(resumed_store), on_checkpoint=_persist(resumed_store, crash_at=K // 2))
    with pytest.raises(Crash):
        run(_config(train_shards, runs, "resumed", 0), hooks)
    first_id = json.loads((resumed_store / "tracking.json").read_text())["run_id"]
    shutil.rmtree(runs / "resumed")  # the node is gone: nothing local survives, MLflow's sqlite neither
    node2 = tmp_path / "node2-runs"  # the restarted rank 0 has another disk
    logged: list[int] = []
    hooks = RunHooks(
        storage=str(resumed_store),
        on_checkpoint=_persist(resumed_store),
        on_log=lambda step, metrics: logged.append(step) if "loss/total" in metrics else None,
    )
    resumed = run(_config(train_shards, node2, "resumed", 0), hooks)
    assert resumed.steps == K and logged == list(range(K // 2 + 1, K + 1))
    a, b = _final_state(straight_store, tmp_path / "a"), _final_state(resumed_store, tmp_path / "b")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"
    names = {c.name for c in resumed_store.iterdir()}
    assert {"backbone.pt", "backbone.json", "config.yaml", "metrics.jsonl", "tracking.json"} <= names
    lines = [json.loads(line) for line in (resumed_store / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss/total" in line]
    assert steps == list(range(1, K + 1)), steps  # whole across the lost node, no step twice
    from hvdistill.tracking import RESUMED_FROM_TAG, run_record

    # the sqlite store died with the node: a new MLflow run that names the one it continues
    record = run_record(resumed.tracking_uri, resumed.tracking_run_id)
    assert record["tags"][RESUMED_FROM_TAG] == first_id
