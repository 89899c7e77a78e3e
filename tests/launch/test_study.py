"""`hvdistill study`: the methods are the loss ablations and controls they claim, seeded per pretraining
seed, everything lands under --out, the readouts are paired by seed; the whole chain on a tiny world
(slow), its report rebuilt from MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvdistill.config import RUN_SECTIONS, ConfigError, load_config
from hvdistill.config.study import VARIANTS
from hvdistill.storage import Location
from launch.study import finished_pretraining, method_config, methods, study_overrides, sweep_config
from tests.helpers import REPO_ROOT, config_path


def study_config(out: Path, *extra: str):
    base = load_config(config_path("study.yaml"), list(extra), sections=())
    return load_config(
        config_path("study.yaml"), [*study_overrides(base, out), *extra], sections=RUN_SECTIONS["study"]
    )


@pytest.mark.parametrize("name", ["study.yaml", "study-gpu.yaml"])
def test_both_study_configs_validate_for_every_stage(tmp_path, name):
    base = load_config(config_path(name), [], sections=())
    cfg = load_config(config_path(name), study_overrides(base, tmp_path), sections=RUN_SECTIONS["study"])
    assert cfg.study.variants == list(VARIANTS) and cfg.sweep.label_fractions == [0.01, 0.1]


def test_variants_drop_exactly_their_loss_terms_and_are_seeded(tmp_path):
    cfg = study_config(tmp_path)
    weights = {v: method_config(cfg, v, 0).loss for v in VARIANTS}
    assert (weights["full"].weight_depth, weights["full"].weight_bev) == (60.0, 0.25)
    assert (weights["ipv_depth"].weight_depth, weights["ipv_depth"].weight_bev) == (60.0, 0.0)
    assert (weights["ipv"].weight_depth, weights["ipv"].weight_bev) == (0.0, 0.0)
    assert all(w.weight_ipv == 1.0 for w in weights.values())
    ipv = method_config(cfg, "ipv", 2)
    assert (ipv.train.run_name, ipv.train.seed) == ("study-ipv-s2", 2)
    assert ipv.model.image.weights == cfg.model.image.weights and not ipv.model.image.random_init


def test_the_random_teacher_control_differs_from_its_variant_only_in_the_teacher(tmp_path):
    cfg = study_config(tmp_path)
    assert methods(cfg) == ["full", "ipv_depth", "ipv", "full_random_teacher"]
    full, control = method_config(cfg, "full", 1), method_config(cfg, "full_random_teacher", 1)
    assert control.model.image.random_init and control.model.image.weights == ""
    assert (
        control.model.image.random_init_seed == 1 and control.train.run_name == "study-full_random_teacher-s1"
    )
    assert control.loss == full.loss and control.train.seed == full.train.seed


def test_the_teacher_decides_where_the_runs_go(tmp_path):
    classes, geometry = study_config(tmp_path), study_config(tmp_path, "study.teacher=geometry")
    assert classes.teacher_train.target == "classes" and geometry.teacher_train.target == "geometry"
    assert Path(geometry.train.output_dir) == tmp_path / "geometry" / "runs"
    assert Path(classes.model.image.weights).parent.parent == tmp_path / "classes"
    assert classes.data.shards == geometry.data.shards  # one world and its shards for both teachers


def test_everything_the_study_writes_is_under_out(tmp_path):
    cfg = study_config(tmp_path)
    paths = [s.root for s in cfg.data.sources] + list(cfg.data.shards)
    paths += [
        cfg.teacher_train.output,
        cfg.model.image.weights,
        cfg.train.output_dir,
        cfg.finetune.output_dir,
    ]
    assert all(Path(p).is_relative_to(tmp_path) for p in paths), paths
    assert not cfg.model.image.random_init and cfg.model.image.weights_format == "torchvision"


def test_the_readout_sweeps_of_a_seed_use_that_seed(tmp_path):
    cfg = study_config(tmp_path, "study.probe_fractions=[0.5,1.0]")
    probe = sweep_config(cfg, "probe-s1", ["random", "/x/study-full-s1"], 1, probe=True)
    assert probe.finetune.frozen_probe and not probe.finetune.linear_probe
    assert probe.sweep.label_fractions == [0.5, 1.0] and probe.sweep.seeds == [1]
    finetune = sweep_config(cfg, "finetune-s1", ["random"], 1, probe=False)
    assert not finetune.finetune.frozen_probe and finetune.sweep.label_fractions == [0.01, 0.1]
    assert finetune.sweep.seeds == [1] and finetune.sweep.name == "finetune-s1"
    assert cfg.finetune.epochs == 100 and cfg.finetune.step_cap == 200 and cfg.finetune.max_steps == 0


def test_config_mistakes_are_listed_with_their_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        study_config(
            tmp_path,
            "study.variants=[full,bev_only]",
            "study.probe_fractions=[0]",
            "study.pretrain_seeds=[1,1]",
            "study.random_teacher=[ipv_depth]",
            "study.bootstrap_resamples=10",
        )
    text = str(err.value)
    assert "study.variants" in text and "e.g. study.variants=" in text
    assert "study.probe_fractions: 0" in text and "study.pretrain_seeds" in text
    assert "study.random_teacher" in text and "study.bootstrap_resamples" in text


# About 6 min on 2 cores (a world, a teacher, 4 pretrainings and 4 sweeps): `make test-all`.
@pytest.mark.slow
def test_a_tiny_study_runs_every_stage_resumes_and_its_report_comes_from_mlflow(tmp_path):
    tiny = [
        'synth.kitti_sequences=["00","08"]',
        "synth.frames_per_scene=3",
        "synth.image_width=320",
        "synth.image_height=96",
        "data.stored_image_width=320",
        "data.stored_image_height=96",
        "augment.min_pairs_per_camera=64",
        "teacher_train.steps=2",
        "teacher_train.eval_images=2",
        "study.variants=[ipv]",
        "study.random_teacher=[ipv]",
        "study.pretrain_seeds=[0,1]",
        "study.bootstrap_resamples=200",
        "train.global_batch=2",
        "train.micro_batch=1",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "finetune.epochs=2",
        "finetune.step_cap=3",
        "probe.max_iterations=20",
        "sweep.label_fractions=[1.0]",
        "dist.max_failures=0",
    ]
    cmd = [sys.executable, "-m", "hvdistill.cli", "study", config_path("study.yaml"), *tiny]
    cmd += ["--out", str(tmp_path), "--workers", "1"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_ALLOW_FILE_STORE": "true"}

    def run(args: list[str]) -> str:  # in its own process, as a user runs it (a Ray driver's threads stay)
        done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
        return done.stdout

    run(cmd)
    own = tmp_path / "classes"
    facts = json.loads((own / "study.json").read_text())
    assert [(r["method"], r["seed"]) for r in facts["pretraining"]] == [
        ("ipv", 0), ("ipv_random_teacher", 0), ("ipv", 1), ("ipv_random_teacher", 1)
    ]  # fmt: skip
    assert sorted((s["kind"], s["seed"]) for s in facts["sweeps"]) == [
        ("finetune", 0), ("finetune", 1), ("probe", 0), ("probe", 1)
    ]  # fmt: skip
    summary = (own / "study.md").read_text()
    for text in ("| ipv - random |", "| ipv - ipv_random_teacher |", "fine-tune 100%", "probe 100% logistic"):
        assert text in summary, text
    assert "probe 100% prototype" in summary and "in_view" in summary and "range_0_20" in summary
    rows = [line.split("|") for line in summary.splitlines() if line.startswith("| ipv - random |")]
    rows = [r for r in rows if r[-2].strip() in ("ipv better", "random better", "not shown")]  # verdicts
    assert len(rows) == 3 and all(r[5].strip().startswith("[") for r in rows)  # each readout bootstrapped
    assert (
        "![paired differences](study-differences.png)" in summary
        and (own / "study-differences.png").is_file()
    )
    report = run([sys.executable, "-m", "hvdistill.cli", "report", "--study", str(own)])

    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("![")]

    assert tables(report) == tables(summary)  # every table rebuilt from the MLflow stores alone
    out = run(cmd)  # everything kept or skipped: nothing retrained
    assert "world" in out and "exists; kept" in out and "done before" in out
    assert out.count("0 to run") == 4
    run([*cmd, "study.teacher=geometry", "--stop-after", "teacher"])  # the class-free teacher, same world
    teacher = json.loads((tmp_path / "geometry" / "teacher" / "teacher.json").read_text())
    assert teacher["target"] == "geometry" and not (tmp_path / "geometry" / "runs").exists()


def test_a_tag_names_a_second_set_of_sweeps_and_must_be_a_plain_name(tmp_path):
    from launch.study import tagged

    assert tagged("finetune", "") == "finetune" and tagged("finetune", "long") == "finetune-long"
    assert study_config(tmp_path, "study.tag=steps300").study.tag == "steps300"
    with pytest.raises(ConfigError, match="study.tag"):
        study_config(tmp_path, "study.tag=../x")


def test_options_may_come_before_or_after_the_overrides(tmp_path, capsys):
    from launch.study import main as study_main
    from launch.sweep import main as sweep_main

    # both reach config validation (return 2 with the config problem) instead of argparse's exit
    bad = "study.variants=[nope]"
    assert study_main([config_path("study.yaml"), "study.tag=x", "--out", str(tmp_path), bad]) == 2
    assert "study.variants" in capsys.readouterr().err
    assert sweep_main([config_path("study.yaml"), "--address", "auto", "sweep.max_concurrent=-1"]) == 2
    assert "sweep.max_concurrent" in capsys.readouterr().err


def test_a_variant_is_kept_only_while_its_backbone_is_in_the_runs_storage(tmp_path, s3_bucket, capsys):
    summary = tmp_path / "study-full" / "study-pretrain.json"
    assert finished_pretraining(summary) is None  # never pretrained
    summary.parent.mkdir()
    run_storage = f"{s3_bucket}/runs/study-full"  # no shared disk: the sweeps read it from there
    info = {"variant": "full", "storage": run_storage, "run_dir": str(tmp_path / "elsewhere")}
    summary.write_text(json.dumps(info))
    assert finished_pretraining(summary) is None  # the backbone is not (or no longer) there
    Location(f"{run_storage}/backbone.pt").write_bytes(b"weights")
    assert finished_pretraining(summary) == info
    for damaged in ("{", "[]", json.dumps({"variant": "full"})):  # e.g. a summary of an older version
        summary.write_text(damaged)
        assert finished_pretraining(summary) is None
        assert "unusable" in capsys.readouterr().out
