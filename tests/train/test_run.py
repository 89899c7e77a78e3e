"""`hvdistill pretrain` end to end in one process: the loss falls, the run directory holds what it promises.

The tiny config on the session's shards: 6 train samples, one per micro-batch and step, without
random augmentation, so every epoch repeats the same 6 batches; 24 steps = 4 epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hvdistill.train.checkpoint import list_checkpoints
from hvdistill.train.run import main
from tests.helpers import config_path
from tests.train.helpers import TINY_TRAIN

STEPS = 24


def _pretrain(shards: Path, out: Path, *overrides: str) -> int:
    args = [config_path("tiny.yaml"), *TINY_TRAIN, f"data.shards=[{shards}]", f"train.output_dir={out}"]
    return main([*args, *overrides])


@pytest.mark.slow  # ~9 s; `make test` pretrains end to end in tests/test_demo.py
def test_pretrain_cli_loss_falls_and_run_dir_is_complete(train_shards, tmp_path, capsys):
    rc = _pretrain(
        train_shards,
        tmp_path,
        "train.run_name=cli",
        "train.global_batch=1",
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        "train.checkpoint_every=5",
        "train.keep_checkpoints=2",
        "train.eval_every=12",
        "train.eval_batches=2",
        "augment.enabled=false",
        "tracking.enabled=true",
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    run_dir = tmp_path / "cli"
    assert f"run directory {run_dir}" in out and "mlflow ui --backend-store-uri sqlite:///" in out

    from hvdistill.tracking import metric_history, run_record

    record = json.loads((run_dir / "tracking.json").read_text())
    assert f"MLflow run {record['run_id']}" in out
    losses = [v for _, v in metric_history(record["uri"], record["run_id"], "loss/total")]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6  # the same 6 batches, epoch 1 vs 4
    assert last < 0.9 * first, f"the loss did not fall: epoch 1 mean {first:.3f}, epoch 4 mean {last:.3f}"
    finished = run_record(record["uri"], record["run_id"])
    assert finished["status"] == "FINISHED"
    for name in ("lr", "grad_norm", "samples_per_s", "data_wait_fraction", "loss/ipv", "val/loss/total"):
        assert name in finished["metrics"], name
    assert finished["params"]["train.max_steps"] == str(STEPS)

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["precision"]["image_dtype"] in ("float32", "bfloat16")  # resolved, never "auto"
    assert resolved["train"]["run_name"] == "cli"
    assert json.loads((run_dir / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 1
    # checkpoints every 5 steps + the final one, the newest 2 kept
    assert [s for s, _ in list_checkpoints(run_dir)] == [20, 24]
    for path in run_dir.rglob("*.pt"):
        torch.load(path, weights_only=True)  # nothing in the run directory needs unpickling
    model = torch.load(run_dir / "checkpoints/step-000024/model.pt", weights_only=True)
    assert not [k for k in model if k.startswith("teacher.backbone")], "the frozen teacher was written"
    backbone = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert backbone and all(isinstance(v, torch.Tensor) for v in backbone.values())
    for key, value in backbone.items():
        assert torch.equal(value, model[f"student.backbone.{key}"]), key
    meta = json.loads((run_dir / "backbone.json").read_text())
    assert meta["step"] == STEPS and meta["model"]["lidar"]["planes"] == resolved["model"]["lidar"]["planes"]
    assert meta["geometry"]["voxel_size"] == resolved["geometry"]["voxel_size"]


def test_a_launcher_run_id_names_the_run_and_a_nameless_multi_rank_launch_is_refused(monkeypatch):
    from hvdistill.config import ConfigError
    from hvdistill.train.run import launcher_run_name

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job/42")  # torchrun --rdzv-id job/42: the same on restart
    assert launcher_run_name(4) == "pretrain-job_42"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's value without a run id
    with pytest.raises(ConfigError, match=r"set train.run_name=<name> .*--rdzv-id"):
        launcher_run_name(2)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert launcher_run_name(1) == ""  # one process: a generated name is fine


@pytest.mark.slow  # two tiny runs, ~6 s
def test_resuming_across_zero_families_ends_in_one_line(train_shards, tmp_path, capsys):
    common = ("train.run_name=family", "train.global_batch=1", "train.checkpoint_every=1")
    assert _pretrain(train_shards, tmp_path, *common, "train.max_steps=1", "dist.zero_stage=0") == 0
    capsys.readouterr()
    assert _pretrain(train_shards, tmp_path, *common, "train.max_steps=2", "dist.zero_stage=2") == 2
    err = capsys.readouterr().err
    assert "not between ZeRO-0 and ZeRO-1/2" in err and "Traceback" not in err
