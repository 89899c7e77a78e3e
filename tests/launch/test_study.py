"""`hvdistill study`: the variants are the loss ablations they claim, everything lands under --out, the
summary table is read right from the sweeps' CSVs; the whole chain on a tiny world (slow)."""

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
from launch.study import finished_pretraining, study_overrides, study_table, sweep_config, variant_config
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


def test_variants_drop_exactly_their_loss_terms(tmp_path):
    cfg = study_config(tmp_path)
    weights = {v: variant_config(cfg, v).loss for v in VARIANTS}
    assert (weights["full"].weight_depth, weights["full"].weight_bev) == (60.0, 0.25)
    assert (weights["ipv_depth"].weight_depth, weights["ipv_depth"].weight_bev) == (60.0, 0.0)
    assert (weights["ipv"].weight_depth, weights["ipv"].weight_bev) == (0.0, 0.0)
    assert all(w.weight_ipv == 1.0 for w in weights.values())
    assert variant_config(cfg, "ipv").train.run_name == "study-ipv"


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


def test_probe_sweep_freezes_the_backbone_at_the_probe_fractions(tmp_path):
    cfg = study_config(tmp_path, "study.probe_fractions=[0.5,1.0]", "study.probe_max_steps=7")
    probe = sweep_config(cfg, "probe", ["random", "/x/study-full"], probe=True)
    assert probe.finetune.linear_probe and probe.finetune.max_steps == 7
    assert probe.sweep.label_fractions == [0.5, 1.0] and probe.sweep.name == "probe"
    finetune = sweep_config(cfg, "finetune", ["random"], probe=False)
    assert not finetune.finetune.linear_probe and finetune.sweep.label_fractions == [0.01, 0.1]


def test_config_mistakes_are_listed_with_their_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        study_config(tmp_path, "study.variants=[full,bev_only]", "study.probe_fractions=[0]")
    text = str(err.value)
    assert "study.variants" in text and "e.g. study.variants=" in text
    assert "study.probe_fractions: 0" in text


def test_table_has_a_row_per_method_and_a_column_per_setting():
    def row(ckpt, frac, mean, std, n=3):
        return {"checkpoint": ckpt, "label_fraction": frac, "miou_mean": mean, "miou_std": std, "n": str(n)}

    ft = [row("study-full", "0.01", "0.25", "0.01"), row("random", "0.01", "0.2", "0.02")]
    ft.append(row("random", "0.1", "0.4", "0"))
    probe = [row("study-full", "1", "0.3", "0.005")]
    lines = study_table(ft, probe).splitlines()
    assert lines[0] == "| method | fine-tune 1% | fine-tune 10% | linear probe 100% |"
    assert lines[2] == "| random | 20.00 +- 2.00 (n=3) | 40.00 +- 0.00 (n=3) |  |"  # random init first
    assert lines[3] == "| full | 25.00 +- 1.00 (n=3) |  | 30.00 +- 0.50 (n=3) |"


# About 4 min on 2 cores (a world, a teacher, a pretraining and two sweeps): `make test-all`.
@pytest.mark.slow
def test_a_tiny_study_runs_every_stage_and_resumes(tmp_path):
    tiny = [
        'synth.kitti_sequences=["00","08"]',
        "synth.frames_per_scene=2",
        "synth.image_width=320",
        "synth.image_height=96",
        "data.stored_image_width=320",
        "data.stored_image_height=96",
        "augment.min_pairs_per_camera=64",
        "teacher_train.steps=2",
        "teacher_train.eval_images=2",
        "study.variants=[ipv]",
        "train.global_batch=2",
        "train.micro_batch=1",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "finetune.max_steps=2",
        "study.probe_max_steps=1",
        "sweep.label_fractions=[1.0]",
        "sweep.seeds=[0]",
        "dist.max_failures=0",
    ]
    cmd = [sys.executable, "-m", "hvdistill.cli", "study", config_path("study.yaml"), *tiny]
    cmd += ["--out", str(tmp_path), "--workers", "1"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_ALLOW_FILE_STORE": "true"}

    def study() -> str:  # in its own process, as a user runs it (a Ray driver's threads stay behind)
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
        return done.stdout

    study()
    facts = json.loads((tmp_path / "study.json").read_text())
    assert [r["variant"] for r in facts["pretraining"]] == ["ipv"]
    table = facts["table_md"]
    assert "| random |" in table and "| ipv |" in table and "nan" not in table.lower()
    assert "linear probe 100%" in table
    assert (tmp_path / "study.md").is_file()
    out = study()  # everything kept or skipped: nothing retrained
    assert "world" in out and "exists; kept" in out and "done before" in out
    assert "0 to run" in out


def test_a_tag_names_a_second_set_of_sweeps_and_must_be_a_plain_name(tmp_path):
    from launch.study import tagged

    assert tagged("finetune", "") == "finetune" and tagged("finetune", "long") == "finetune-long"
    assert study_config(tmp_path, "study.tag=steps300").study.tag == "steps300"
    with pytest.raises(ConfigError, match="study.tag"):
        study_config(tmp_path, "study.tag=../x")


def test_the_summary_is_written_under_its_own_name(tmp_path):
    from types import SimpleNamespace

    from launch.study import write_summary

    csv_path = tmp_path / "summary.csv"
    csv_path.write_text("checkpoint,label_fraction,miou_mean,miou_std,n,seeds\nrandom,0.1,0.2,0.01,3,0 1 2\n")
    ft = SimpleNamespace(paths={"summary_csv": csv_path}, sweep_dir=tmp_path, parent_run_id="p", uri="u")
    facts = {"teacher": {"val": {"miou": 0.4, "accuracy": 0.9}}, "pretraining": [], "seconds": {}}
    path = write_summary(tmp_path, facts, ft, None, "study-long")
    assert path == tmp_path / "study-long.md" and (tmp_path / "study-long.json").is_file()
    assert "| random | 20.00 +- 1.00 (n=3) |" in path.read_text()
    assert not (tmp_path / "probe.md").exists()


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
