"""launch/train.py without a cluster: the config the workers get and the TorchTrainer built from `dist`.

The Ray runs themselves (2 workers, ZeRO-2, a killed worker) are tests/launch/test_train_ray.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvdistill import cli
from hvdistill.config import RUN_SECTIONS, ConfigError, from_dict, load_config, to_dict
from launch.train import prepare_config, run_dir_of, run_storage_of, storage_path_of, train_on_ray

BASE = ["model.image.random_init=true", "data.shards=[rel/shards, /abs/shards]"]


def tiny(*overrides: str):
    return load_config("configs/tiny.yaml", [*BASE, *overrides], sections=RUN_SECTIONS["pretrain"])


def test_paths_become_absolute_against_the_launch_directory(tmp_path):
    cfg = tiny("train.output_dir=runs", "model.image.random_init=false", "model.image.weights=w.pth")
    cfg = prepare_config(cfg, base=tmp_path)
    assert cfg.train.output_dir == str(tmp_path / "runs")
    assert cfg.data.shards == [str(tmp_path / "rel/shards"), "/abs/shards"]
    assert cfg.model.image.weights == str(tmp_path / "w.pth")
    assert storage_path_of(cfg) == str(tmp_path / "runs" / "ray")  # default: beside the runs
    uri = prepare_config(tiny("dist.storage_path=s3://bucket/ray"), base=tmp_path)
    assert uri.dist.storage_path == "s3://bucket/ray"  # URIs are left alone


def test_run_name_is_fixed_once_and_kept_when_given(tmp_path):
    first = prepare_config(tiny(), base=tmp_path)
    again = prepare_config(first, base=tmp_path)
    assert first.train.run_name.startswith("pretrain-") and again.train.run_name == first.train.run_name
    named = prepare_config(tiny("train.run_name=mine"), base=tmp_path)
    assert run_dir_of(named) == tmp_path / "runs" / "mine"


def test_the_prepared_config_survives_the_trip_to_a_worker(tmp_path):
    cfg = prepare_config(tiny("dist.num_workers=2"), base=tmp_path)
    assert from_dict(json.loads(json.dumps(to_dict(cfg))), RUN_SECTIONS["pretrain"]) == cfg


def test_trainer_takes_workers_resources_storage_and_restarts_from_dist(tmp_path):
    from launch.train import build_trainer

    cfg = prepare_config(
        tiny(
            "dist.num_workers=3",
            "train.global_batch=6",
            "dist.cpus_per_worker=2",
            "dist.max_failures=5",
            "train.run_name=r1",
        ),
        base=tmp_path,
    )
    trainer = build_trainer(cfg)
    assert trainer.scaling_config.num_workers == 3 and not trainer.scaling_config.use_gpu
    assert trainer.scaling_config.resources_per_worker == {"CPU": 2}
    assert trainer.run_config.name == "r1" and trainer.run_config.storage_path == str(tmp_path / "runs/ray")
    assert trainer.run_config.failure_config.max_failures == 5
    assert trainer.backend_config.backend == "gloo"
    gpu = build_trainer(prepare_config(tiny("dist.use_gpu=true", "dist.gpus_per_worker=0.5"), base=tmp_path))
    assert gpu.scaling_config.resources_per_worker == {"CPU": 1, "GPU": 0.5}
    assert gpu.backend_config.backend == "nccl"
    elastic = build_trainer(prepare_config(tiny("dist.num_workers=[1,2]"), base=tmp_path))
    assert elastic.scaling_config.num_workers == (1, 2) and elastic.scaling_config.elasticity_enabled


def test_the_run_storage_is_the_storage_path_and_the_run_name(tmp_path):
    remote = prepare_config(tiny("train.run_name=r2", "dist.storage_path=s3://bucket/runs"), base=tmp_path)
    assert run_storage_of(remote) == "s3://bucket/runs/r2"
    local = prepare_config(tiny("train.run_name=r2"), base=tmp_path)
    assert run_storage_of(local) == str(tmp_path / "runs" / "ray" / "r2")


def test_resume_never_over_a_stored_run_is_refused_before_anything_starts(tmp_path):
    cfg = tiny("train.run_name=old", "train.resume=never", f"train.output_dir={tmp_path / 'runs'}")
    (Path(run_storage_of(prepare_config(cfg))) / "step-000004").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds checkpoints of a run named old .*train.run_name"):
        train_on_ray(cfg)
    assert not (tmp_path / "runs" / "old").exists()


def test_pretrain_ray_config_error_exits_2_before_ray_starts(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert cli.main(["pretrain", "configs/tiny.yaml", *BASE, "dist.zero_stage=5", "--ray"]) == 2
    assert "dist.zero_stage" in capsys.readouterr().err
    import sys

    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


@pytest.mark.parametrize("bad", ["hvdistill.train.run", ":run", "x:"])
def test_entry_must_name_module_and_function(bad):
    from launch.train import _resolve_entry

    with pytest.raises(ValueError, match="module:function"):
        _resolve_entry(bad)
