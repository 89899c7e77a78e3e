"""A tiny label-efficiency sweep on local Ray Tune: 2 checkpoints x 2 fractions x 2 seeds, then a re-run that
finishes only the missing trials."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
import subprocess
import sys

import pytest
import torch

from hvdistill.config import ConfigError
from hvdistill.eval.report import TRIAL_TAG
from hvdistill.tracking import artifact_paths, child_runs, run_record
from launch.submit import build_parser, sweep_request
from launch.sweep import completed_keys, load_sweep_config, main, prepare_config
from launch.trials import backbone_digests, checkpoint_labels, trial_specs
from tests.eval.helpers import export_backbone, tiny_config, trained_looking_student, write_labelled_shards
from tests.helpers import REPO_ROOT, config_path
from tests.helpers.world import NUSCENES_VERSION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = [
    "finetune.batch_size=2",
    "finetune.eval_batch_size=2",
    "finetune.loader_workers=0",
    "finetune.max_steps=2",
    "sweep.label_fractions=[0.5,1.0]",
    "sweep.seeds=[0,1]",
    "sweep.max_concurrent=2",
    "sweep.cpus_per_trial=1",
]


@pytest.fixture(scope="module")
def sweep_inputs(nuscenes_root, tmp_path_factory):
    """Labelled nuScenes shards of the session world, a backbone.pt/backbone.json of a fresh student,
    and the world's scene table (the 1/2 split walks it)."""
    shards = write_labelled_shards(tmp_path_factory.mktemp("sweep-shards"), {"nuscenes": nuscenes_root})
    pre = export_backbone(
        trained_looking_student(tiny_config()), tiny_config(), tmp_path_factory.mktemp("pre") / "pre"
    )
    return shards, pre, nuscenes_root / NUSCENES_VERSION


def args_for(tmp_path, inputs, checkpoints: str, *extra: str) -> list[str]:
    shards, _, table = inputs
    return [
        config_path("tiny.yaml"), f"data.shards=[{shards}]", f"finetune.output_dir={tmp_path}",
        f"finetune.scene_table={table}", f"sweep.checkpoints=[{checkpoints}]", "sweep.name=s", *TINY, *extra,
    ]  # fmt: skip


def sweep_config(tmp_path, *extra: str):
    over = [*TINY, "data.shards=[/shards]", "sweep.name=x", *extra]
    return prepare_config(load_sweep_config(config_path("tiny.yaml"), over), tmp_path)


def test_paths_a_trial_reads_become_absolute_before_tune_moves_it_to_another_directory(tmp_path):
    cfg = sweep_config(
        tmp_path,
        "data.sources.0.root=rel/nuscenes",
        "finetune.scene_table=rel/scene.json",
        "data.shards=[sh]",
    )  # the demo's relative nuScenes root once failed every 1/2-fraction trial: no scene table found
    assert cfg.data.sources[0].root == str(tmp_path / "rel" / "nuscenes")
    assert cfg.finetune.scene_table == str(tmp_path / "rel" / "scene.json")
    assert cfg.data.shards == [str(tmp_path / "sh")] and cfg.finetune.output_dir.startswith(str(tmp_path))


def test_trial_keys_are_deterministic_distinct_and_follow_the_backbones_content(tmp_path):
    student = trained_looking_student(tiny_config())
    export_backbone(student, tiny_config(), tmp_path / "a" / "b")
    cfg = sweep_config(tmp_path, "sweep.checkpoints=[random,a/b]", "sweep.lr_trunk=[0.1,0.2]")
    specs = trial_specs(cfg, backbone_digests(cfg, tmp_path / "x"))
    assert len(specs) == 2 * 2 * 2 * 2 and len({s["key"] for s in specs}) == 16
    again = trial_specs(cfg, backbone_digests(cfg, tmp_path / "x"))
    assert [s["key"] for s in again] == [s["key"] for s in specs]
    assert {s["checkpoint"] for s in specs} == {"random", str(tmp_path / "a" / "b")}
    digest = hashlib.sha256((tmp_path / "a" / "b" / "backbone.pt").read_bytes()).hexdigest()
    assert {s["backbone_sha256"] for s in specs} == {"random", digest}
    # pretrained again into the same directory: other weights, other keys (the old trials do not count)
    torch.save(
        {k: v + 1 for k, v in student.backbone_state_dict().items()}, tmp_path / "a" / "b" / "backbone.pt"
    )
    redone = trial_specs(cfg, backbone_digests(cfg, tmp_path / "x"))
    pretrained = {s["key"] for s in specs if s["checkpoint"] != "random"}
    assert not pretrained & {s["key"] for s in redone}
    assert [s["key"] for s in redone if s["checkpoint"] == "random"] == [
        s["key"] for s in specs if s["checkpoint"] == "random"
    ]
    with pytest.raises(ConfigError, match="tracking.enabled"):
        load_sweep_config(config_path("tiny.yaml"), ["tracking.enabled=false"])
    with pytest.raises(ConfigError, match="sweep.checkpoints"):
        load_sweep_config(config_path("tiny.yaml"), ["sweep.checkpoints=[]"])


def test_checkpoints_are_found_and_hashed_before_anything_is_created(tmp_path):
    pre = export_backbone(trained_looking_student(tiny_config()), tiny_config(), tmp_path / "pre")
    cfg = sweep_config(tmp_path, f"sweep.checkpoints=[{pre},{pre / 'backbone.pt'}]")
    with pytest.raises(ConfigError, match="hold the same backbone"):
        backbone_digests(cfg, tmp_path / "x")
    cfg = sweep_config(tmp_path, "sweep.checkpoints=[random,missing-run]")
    with pytest.raises(ConfigError, match=r"sweep.checkpoints\[1\]: finetune.backbone: '.*missing-run'"):
        backbone_digests(cfg, tmp_path / "x")


@pytest.mark.parametrize(
    ("checkpoint", "label"),
    [
        ("runs:/../../../etc", "run-.._.._.."),
        ("runs://abs/x", "run-abs_x"),
        ("/data/runs/my run (2)", "my_run__2_"),
        ("/data/runs/..", "checkpoint"),
    ],
)
def test_checkpoint_labels_never_leave_the_trials_directory(checkpoint, label):
    [got] = checkpoint_labels([checkpoint])
    assert got == label and "/" not in got and got not in (".", "..")


def test_only_finished_trials_that_logged_their_miou_count_as_done(tmp_path):
    from tests.eval.test_report import synthetic_sweep

    uri, parent = synthetic_sweep(tmp_path)
    done = completed_keys(uri, parent)
    assert "pre-0.1-3" not in done and "pre-1.0-2" not in done  # no val/miou; FAILED
    assert "random-0.1-0" in done and len(done) == 8


def test_a_sweep_that_cannot_start_leaves_no_directory_and_a_second_driver_is_refused(
    sweep_inputs, tmp_path, capsys
):
    from hvdistill.dirlock import directory_lock

    shards, _, _ = sweep_inputs
    out = tmp_path / "out"
    args = [config_path("tiny.yaml"), f"data.shards=[{shards}]", f"finetune.output_dir={out}", *TINY]
    args.append(f"data.sources.0.root={tmp_path / 'no-raw-data'}")  # no scene table to find
    assert (
        main([*args, "sweep.checkpoints=[missing-run]", "sweep.label_fractions=[1.0]", "sweep.name=s"]) == 2
    )
    assert "sweep.checkpoints[0]" in capsys.readouterr().err and not out.exists()
    assert main([*args, "sweep.label_fractions=[0.5]", "sweep.name=s"]) == 2  # nuScenes 1/2: no scene table
    assert "no scene table was found" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    empty = f"data.shards=[{tmp_path / 'empty'}]"
    assert main([*args, empty, "sweep.label_fractions=[1.0]", "sweep.name=s"]) == 2
    assert "empty/manifest.json: no manifest" in capsys.readouterr().err and not out.exists()
    busy = out / "busy"
    busy.mkdir(parents=True)
    with directory_lock(busy, "sweep"):
        assert main([*args, "sweep.label_fractions=[1.0]", "sweep.name=busy"]) == 2
    assert "is being written by another sweep" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["_state"]


@pytest.mark.slow
def test_sweep_runs_every_trial_as_a_child_run_and_a_rerun_finishes_only_the_missing(
    sweep_inputs, tmp_path, capsys
):
    _, pre, _ = sweep_inputs
    # an "interrupted" sweep: only the random-init trials ran
    assert main(args_for(tmp_path, sweep_inputs, "random")) == 0
    first = capsys.readouterr().out
    assert "sweep: 4 trials, 0 already finished, 4 to run" in first and first.count("sweep: [") == 4
    sweep_dir = tmp_path / "s"
    info = json.loads((sweep_dir / "sweep.json").read_text())
    uri, parent = info["uri"], info["parent_run_id"]
    before = {r["run_id"] for r in child_runs(uri, parent)}
    assert len(before) == 4
    # the full sweep under the same name: the 4 random-init trials are skipped, the 4 others run
    assert main(args_for(tmp_path, sweep_inputs, f"random,{pre}")) == 0
    out = capsys.readouterr().out
    assert "sweep: 8 trials, 4 already finished, 4 to run" in out
    assert "sweep: [5/8]" in out and "sweep: [8/8]" in out and "sweep: [1/8]" not in out
    children = child_runs(uri, parent)
    assert len(children) == 8 and before <= {r["run_id"] for r in children}
    assert all(r["status"] == "FINISHED" for r in children)
    assert len({r["tags"][TRIAL_TAG] for r in children}) == 8
    assert {r["tags"]["hvdistill.sweep.label"] for r in children} == {"random", "pre"}
    assert run_record(uri, parent)["status"] == "FINISHED"
    rows = list(csv.DictReader((sweep_dir / "report" / "summary.csv").open()))
    assert {(r["checkpoint"], r["label_fraction"], r["n"]) for r in rows} == {
        (c, f, "2") for c in ("random", "pre") for f in ("0.5", "1")
    }
    for row in rows:  # the table is the mean of what the children logged
        mious = [
            r["metrics"]["val/miou"]
            for r in children
            if r["tags"]["hvdistill.sweep.label"] == row["checkpoint"]
            and float(r["tags"]["hvdistill.sweep.label_fraction"]) == float(row["label_fraction"])
        ]
        assert len(mious) == 2 and abs(float(row["miou_mean"]) - sum(mious) / 2) < 1e-6
    assert (sweep_dir / "report" / "label_efficiency.png").read_bytes()[:8] == PNG_MAGIC
    assert f"sweep: plot {sweep_dir / 'report' / 'label_efficiency.png'}" in out and "| pre |" in out
    assert "report/summary.md" in artifact_paths(uri, parent)
    # nothing left to run: no new child, the report regenerated
    assert main(args_for(tmp_path, sweep_inputs, f"random,{pre}")) == 0
    assert "8 already finished, 0 to run" in capsys.readouterr().out
    assert len(child_runs(uri, parent)) == 8


def test_submit_sweep_request_fixes_the_sweep_name_and_refuses_relative_paths(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO_ROOT)
    argv = ["sweep", "configs/tiny.yaml", f"finetune.output_dir={tmp_path}", "data.shards=[/abs/shards]"]
    args = build_parser().parse_args([*argv, "sweep.checkpoints=[random,/abs/run]", "sweep.seeds=[3]"])
    request, name, sweep_dir, _ = sweep_request(args)
    words = shlex.split(request["entrypoint"])
    assert words[:5] == ["python", "-m", "hvdistill.cli", "sweep", "configs/tiny.yaml"]
    assert (
        f"sweep.name={name}" in words and "sweep.seeds=[3]" in words and words[-2:] == ["--address", "auto"]
    )
    assert sweep_dir == tmp_path / name and name.startswith("sweep-")
    args = build_parser().parse_args([*argv, "sweep.name=again"])
    assert shlex.split(sweep_request(args)[0]["entrypoint"]).count("sweep.name=again") == 1
    from launch.submit import main as submit_main

    assert submit_main([*argv, "sweep.checkpoints=[runs/pretrain-x]", "--address", "http://127.0.0.1:9"]) == 2
    assert "sweep.checkpoints.0: 'runs/pretrain-x' is relative" in capsys.readouterr().err


@pytest.mark.slow
def test_submitted_sweep_job_runs_its_trials_and_reports(ray_head, sweep_inputs, tmp_path):
    shards, _, _ = sweep_inputs
    overrides = [
        f"data.shards=[{shards}]", f"finetune.output_dir={tmp_path}", "sweep.checkpoints=[random]",
        "sweep.name=job", *TINY, "sweep.label_fractions=[1.0]",
    ]  # fmt: skip
    command = [sys.executable, "-m", "hvdistill.cli", "submit", "sweep", "configs/tiny.yaml", *overrides]
    done = subprocess.run(
        [*command, "--address", ray_head.dashboard], cwd=REPO_ROOT, env=ray_head.env,
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-5000:]
    assert f"submit: sweep directory {tmp_path / 'job'} (sweep.name=job)" in done.stdout
    assert re.search(r"sweep: \[2/2\] random-f1-s[01]-\w+: mIoU", done.stdout), text[-3000:]  # either order
    info = json.loads((tmp_path / "job" / "sweep.json").read_text())
    assert len(child_runs(info["uri"], info["parent_run_id"])) == 2
    assert (tmp_path / "job" / "report" / "label_efficiency.png").read_bytes()[:8] == PNG_MAGIC


def test_after_pretrain_sweep_config_is_checked_before_pretraining(capsys):
    from launch.train import main as pretrain_ray_main

    argv = [config_path("tiny.yaml"), "sweep.after_pretrain=true", "tracking.enabled=false", "--ray"]
    assert pretrain_ray_main(argv) == 2
    assert "sweep.after_pretrain records its trials in MLflow" in capsys.readouterr().err


@pytest.mark.slow
def test_after_pretrain_sweeps_the_exported_backbone_and_random_init(nuscenes_root, tmp_path, capsys):
    from launch.train import main as pretrain_ray_main
    from tests.eval.test_pretrain_backbone import PRETRAIN

    shards = write_labelled_shards(
        tmp_path / "shards", {"nuscenes": nuscenes_root}, cameras=("CAM_FRONT", "CAM_BACK")
    )
    argv = [
        config_path("tiny.yaml"), *PRETRAIN, "tracking.enabled=true", f"data.shards=[{shards}]",
        f"train.output_dir={tmp_path / 'pre'}", f"finetune.output_dir={tmp_path / 'ft'}", *TINY,
        "sweep.label_fractions=[1.0]", "sweep.seeds=[0]", "sweep.after_pretrain=true", "--ray",
    ]  # fmt: skip
    assert pretrain_ray_main(argv) == 0
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "ft" / "sweep-pre"
    info = json.loads((sweep_dir / "sweep.json").read_text())
    children = child_runs(info["uri"], info["parent_run_id"])
    assert {r["tags"]["hvdistill.sweep.checkpoint"] for r in children} == {
        str(tmp_path / "pre" / "ray" / "pre"),  # the run's storage (default: <output_dir>/ray/<run>)
        "random",
    }
    assert "sweep: [2/2]" in out and f"sweep: plot {sweep_dir / 'report' / 'label_efficiency.png'}" in out


def test_a_trial_runs_one_torch_thread_per_reserved_cpu():
    import torch

    from launch.sweep import threads_for

    before = torch.get_num_threads()
    try:
        assert [threads_for(c) for c in (0.5, 1.0, 2.0)] == [1, 1, 2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_resumed_sweep_with_other_shared_settings_is_refused_with_both_ways_out(sweep_inputs, tmp_path):
    from dataclasses import replace

    from launch.sweep import check_inputs, read_sweep_file, trial_settings

    shards, _, _ = sweep_inputs
    over = [*TINY, f"finetune.output_dir={tmp_path}", "sweep.name=s", "sweep.label_fractions=[1.0]"]
    cfg = prepare_config(tiny_config(*over, f"data.shards=[{shards}]"))
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({"parent_run_id": "p", "settings": trial_settings(cfg)}))
    longer = replace(cfg, finetune=replace(cfg.finetune, max_steps=300, seed=7, loader_workers=3))
    with pytest.raises(ConfigError) as err:
        check_inputs(longer, sweep_dir)  # refused before any MLflow store is opened
    (line,) = err.value.problems  # seed is a trial coordinate and loader_workers only speed: not listed
    assert line.startswith("finetune.max_steps: sweep 's' ran its trials with 2, the config now has 300")
    assert "set finetune.max_steps=2" in line and "new sweep.name" in line
    assert not (sweep_dir / "mlruns.db").exists()
    (sweep_dir / "sweep.json").write_text('{"parent_run_id": ')  # damaged: named, not a traceback
    with pytest.raises(ConfigError, match="sweep.json: unreadable"):
        read_sweep_file(sweep_dir / "sweep.json")
    (sweep_dir / "sweep.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a sweep record"):
        read_sweep_file(sweep_dir / "sweep.json")
