"""A ViT teacher through pretraining and its launchers: one process, Ray Train, the study's teacher stage.

- fast: 2 steps of `hvdistill pretrain` in this process with a tiny ViT teacher read from a
  DINOv2-format file, the kind `hvdistill teacher train` writes for a ViT; the run exports its
  backbone;
- fast: the study points pretraining at its ViT teacher's file with format dinov2, and refuses
  to go on from a kept teacher of another arch (the runs beside it are that teacher's);
- slow: pretraining with a random tiny ViT teacher on Ray Train (one worker on a local Ray),
  exporting its backbone;
- slow: `hvdistill study configs/study.yaml --stop-after teacher` with a ViT arch trains the ViT
  teacher and writes it as a DINOv2 file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvdistill.config import RUN_SECTIONS, load_config
from hvdistill.models.image.vit import build_vit
from hvdistill.teacher.backbone import save_backbone
from hvdistill.train.run import main as pretrain
from launch.study import make_teacher, study_overrides
from tests.helpers import REPO_ROOT, config_path
from tests.train.helpers import TINY_TRAIN, tiny_train_config

ARCH = "vit_tiny_patch14"
VIT = [f"model.image.arch={ARCH}", "geometry.feature_stride=14", "loss.depth_target_pool=14"]
QUICK = ["train.global_batch=1", "train.max_steps=2", "train.eval_batches=1", "train.log_every=1"]


def _backbone_is_complete(run_dir: Path) -> dict[str, torch.Tensor]:
    backbone = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert backbone and all(torch.isfinite(v).all() for v in backbone.values() if v.is_floating_point())
    assert json.loads((run_dir / "backbone.json").read_text())["step"] == 2
    return backbone


def _study_config(out: Path, *extra: str):
    base = load_config(config_path("study.yaml"), list(extra), sections=())
    overrides = [*study_overrides(base, out), *extra]
    return load_config(config_path("study.yaml"), overrides, sections=RUN_SECTIONS["study"])


def test_pretraining_reads_a_dinov2_vit_teacher_file_and_exports_its_backbone(
    launch_shards, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="hvdistill.models.image.weights")
    torch.manual_seed(0)
    weights = tmp_path / "vit.pt"
    save_backbone(build_vit(ARCH), weights)  # what `hvdistill teacher train` saves for a ViT
    teacher = [f"model.image.weights={weights}", "model.image.weights_format=dinov2"]
    argv = [config_path("tiny.yaml"), *TINY_TRAIN, f"data.shards=[{launch_shards}]", *VIT, *QUICK]
    argv += ["model.image.random_init=false", *teacher, f"train.output_dir={tmp_path}", "train.run_name=vit"]
    assert pretrain(argv) == 0, capsys.readouterr().out[-3000:]
    _backbone_is_complete(tmp_path / "vit")
    assert f"{weights} (dinov2): 35 loaded, 0 missing, 0 unexpected" in caplog.text


def test_the_study_loads_a_vit_teacher_as_a_dinov2_file(tmp_path):
    cfg = _study_config(tmp_path, *VIT, "model.image.arch=vit_small_patch14")
    image = cfg.model.image
    assert (image.arch, image.weights_format, image.weights) == (
        "vit_small_patch14",
        "dinov2",
        cfg.teacher_train.output,
    )
    resnet = load_config(config_path("study.yaml"), [], sections=())
    assert "model.image.weights_format=torchvision" in study_overrides(resnet, tmp_path)


@pytest.mark.parametrize("kept", [{"arch": "resnet18"}, {}])  # {}: a file from before ViT teachers
def test_the_study_refuses_a_kept_teacher_of_another_arch(tmp_path, kept):
    cfg = _study_config(tmp_path, *VIT)
    weights = Path(cfg.teacher_train.output)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    weights.with_suffix(".json").write_text(json.dumps({"target": "classes", **kept}))
    with pytest.raises(SystemExit, match=f"is a {kept.get('arch', 'ResNet')} teacher.*give another --out"):
        make_teacher(config_path("study.yaml"), [], cfg)
    resnet = _study_config(tmp_path)
    assert make_teacher(config_path("study.yaml"), [], resnet)["target"] == "classes"


@pytest.mark.slow  # a local Ray and one Ray Train worker: ~30 s on 2 cores
def test_a_random_vit_teacher_pretrains_on_ray_train_and_the_backbone_is_exported(launch_shards, tmp_path):
    from launch.train import train_on_ray

    out = tmp_path / "runs"
    cfg = tiny_train_config(
        launch_shards,
        *VIT,
        *QUICK,
        "dist.max_failures=0",
        f"train.output_dir={out}",
        "train.run_name=vit-ray",
    )
    assert cfg.model.image.random_init
    result = train_on_ray(cfg)
    assert result.steps == 2 and result.run_dir == out / "vit-ray"
    backbone = _backbone_is_complete(result.run_dir)
    assert backbone.keys() == torch.load(result.backbone, weights_only=True).keys()  # its storage copy


# a world of 2 x 3 frames, its shards on a local Ray, a 2-step ViT teacher: ~20 s on 2 cores
@pytest.mark.slow
def test_the_study_trains_a_vit_teacher(tmp_path):
    tiny = [
        'synth.kitti_sequences=["00","08"]',
        "synth.frames_per_scene=3",
        "synth.image_width=320",
        "synth.image_height=96",
        "data.stored_image_width=320",
        "data.stored_image_height=96",
        "teacher_train.steps=2",
        "teacher_train.eval_images=2",
        *VIT,
    ]
    cmd = [sys.executable, "-m", "hvdistill.cli", "study", config_path("study.yaml"), *tiny]
    cmd += ["--out", str(tmp_path), "--workers", "1", "--stop-after", "teacher"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_ALLOW_FILE_STORE": "true"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    teacher = tmp_path / "classes" / "teacher"
    info = json.loads((teacher / "teacher.json").read_text())
    assert (info["arch"], info["weights_format"], info["train_stride"]) == (ARCH, "dinov2", 14)
    saved = torch.load(teacher / "teacher.pt", weights_only=True)
    assert saved.keys() == build_vit(ARCH).state_dict().keys()
    assert "model.image.weights_format=dinov2" in done.stdout and not (tmp_path / "classes" / "runs").exists()
