"""Tiny fine-tuning and linear-probing runs on labelled shards of the synthetic world (a few steps each)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.shards import build_shard_dataset
from hvdistill.eval.finetune import finetune
from hvdistill.eval.run import load_finetune_config, main
from hvdistill.tracking import NullTracker
from tests.eval.helpers import damage_labels, export_backbone, trained_looking_student
from tests.helpers import config_path

FAST = [
    "finetune.batch_size=2",
    "finetune.eval_batch_size=2",
    "finetune.loader_workers=0",
    "finetune.log_every=1",
    "tracking.enabled=false",
]


class RecordingTracker(NullTracker):
    """A tracker that keeps what it is given (the loop's metrics), for the assertions."""

    def __init__(self):
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags):
        self.tags.update(tags)


def val_points(shards, dataset: str, point_range: list[float]) -> tuple[int, int, int]:
    """(all points, labelled points, labelled points outside the range) of the val split, read
    through the shard reader itself (not the fine-tuning data path)."""
    data = DataConfig(
        shards=[str(shards)], shard_splits=["val"], datasets=[dataset], resampled=False,
        sources=[SourceConfig(name=dataset)], stored_image_width=96, stored_image_height=54,
    )  # fmt: skip
    total = labelled = outside = 0
    for sample in build_shard_dataset(data, rank=0, world_size=1):
        if sample.meta.get("padding"):
            continue
        lo, hi = np.array(point_range[:3]), np.array(point_range[3:])
        inside = np.all((sample.points[:, :3] >= lo) & (sample.points[:, :3] < hi), axis=1)
        total += len(sample.labels)
        labelled += int((sample.labels != 0).sum())
        outside += int(((sample.labels != 0) & ~inside).sum())
    return total, labelled, outside


def test_cli_fine_tunes_scores_every_val_point_and_tracks_the_run(labelled_shards, tmp_path, capsys):
    args = [config_path("tiny.yaml"), f"data.shards=[{labelled_shards}]", f"finetune.output_dir={tmp_path}"]
    args += [*FAST[:-1], "finetune.max_steps=2", "finetune.run_name=ft", "finetune.convergence_window=0.5"]
    args += [f"tracking.uri=sqlite:///{tmp_path}/mlruns.db"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "ft"
    assert (
        f"fine-tuning run directory: {run}" in out
        and "mIoU " in out
        and f"metrics: {run}/metrics.json" in out
    )
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = load_finetune_config(None, [f"data.shards=[{labelled_shards}]"])
    total, labelled, outside = val_points(labelled_shards, "nuscenes", cfg.finetune.point_range)
    assert labelled > 0 and outside > 0  # the world's tall buildings reach above z = 9.6 m
    assert (metrics["points_total"], metrics["points"], metrics["points_outside_range"]) == (
        total,
        labelled,
        outside,
    )
    assert metrics["scans"] == metrics["val_scans"] == 3 and metrics["bad_scans"] == 0
    assert np.isfinite(metrics["miou"]) and 0 <= metrics["miou"] <= 1 and metrics["steps"] == 2
    assert len(metrics["per_class_iou"]) == 16 and "driveable_surface" in metrics["per_class_iou"]
    with open(run / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == labelled
    assert sum(int(r[1]) for r in rows[1:]) == outside  # the "ignore" column: points without a prediction
    split = json.loads((run / "label_split.json").read_text())
    assert (split["k"], len(split["keys"]), split["unit"]) == (1, 6, "scene")
    assert json.loads((run / "backbone_load.json").read_text())["source"] == "random"
    from hvdistill.tracking import artifact_paths, metric_history, run_record

    ids = json.loads((run / "tracking.json").read_text())
    record = run_record(ids["uri"], ids["run_id"])
    assert record["params"]["finetune.max_steps"] == "2"
    assert record["params"]["model.lidar.stem_channels"] == "8"
    assert [s for s, _ in metric_history(ids["uri"], ids["run_id"], "val/miou")] == [1, 2]  # 1: the window
    held_out = metric_history(ids["uri"], ids["run_id"], "val/loss")
    convergence = json.loads((run / "convergence.json").read_text())
    assert [s for s, _ in held_out] == [1, 2] and convergence["held_out_loss_at_end"] == held_out[1][1]
    assert convergence["held_out_loss_at_window_start"] == held_out[0][1] and convergence["window"] == 0.5
    converged = metric_history(ids["uri"], ids["run_id"], "val/converged")
    assert converged == [(2, float(convergence["converged"]))]
    classes = metric_history(ids["uri"], ids["run_id"], "val/classes_in_mean")
    assert classes[-1] == (2, metrics["classes_in_mean"]) and metrics["miou_classes"] == "ground_truth"
    assert record["tags"]["hvdistill.split.scenes"] == " ".join(split["units_kept"])
    assert f"mIoU {100 * metrics['miou']:.2f} over {metrics['classes_in_mean']} classes" in out
    assert (run / "_state" / "job.lock").is_file()  # the run held its directory's lock
    assert [s for s, _ in metric_history(ids["uri"], ids["run_id"], "loss/total")] == [1, 2]
    assert {"metrics.json", "label_split.json", "confusion_matrix.csv", "convergence.json"} <= set(
        artifact_paths(ids["uri"], ids["run_id"])
    )
    assert {"confusion_per_scan.npy", "confusion_per_scan.json"} <= set(
        artifact_paths(ids["uri"], ids["run_id"])
    )
    assert main(args) == 2 and "holds a finished fine-tuning run" in capsys.readouterr().err


def test_the_budget_in_epochs_grows_with_the_labels_up_to_its_cap():
    from types import SimpleNamespace

    from hvdistill.eval.finetune import convergence, step_budget

    ft = SimpleNamespace(
        max_steps=0, epochs=100, step_cap=200, convergence_window=0.25, convergence_tolerance=0.02
    )
    assert (step_budget(ft, 1), step_budget(ft, 6)) == (100, 200)  # 1% (2 scans) and 10% (12), batch 2
    assert step_budget(SimpleNamespace(max_steps=7, epochs=100, step_cap=200), 6) == 7
    assert step_budget(SimpleNamespace(max_steps=0, epochs=100, step_cap=0), 6) == 600
    assert convergence(1.0, 0.99, ft)["converged"] and not convergence(1.0, 0.9, ft)["converged"]
    assert convergence(1.0, 1.2, ft)["converged"]  # rising: no longer improving
    assert not convergence(float("nan"), 0.5, ft)["converged"]


def reversed_scene_table(nuscenes_root, out):
    """The world's devkit scene table with its rows in reverse order (so not in name order)."""
    from tests.helpers.world import NUSCENES_VERSION

    rows = json.loads((nuscenes_root / NUSCENES_VERSION / "scene.json").read_text())
    out.write_text(json.dumps(rows[::-1]))
    return [r["name"] for r in rows[::-1]]


def test_linear_probe_from_a_pretrained_backbone_keeps_it_unchanged(labelled_shards, nuscenes_root, tmp_path):
    cfg = load_finetune_config(config_path("tiny.yaml"), [f"data.shards=[{labelled_shards}]", *FAST])
    student = trained_looking_student(cfg)
    export_backbone(student, cfg, tmp_path / "pretrain")
    cfg.finetune.backbone, cfg.finetune.linear_probe = str(tmp_path / "pretrain"), True
    cfg.finetune.label_fraction, cfg.finetune.epochs = 0.5, 2
    table = reversed_scene_table(nuscenes_root, tmp_path / "scene.json")
    assert table != sorted(table)  # a world whose scene table is not in name order
    cfg.finetune.scene_table = str(tmp_path / "scene.json")
    tracker = RecordingTracker()
    result = finetune(cfg, tmp_path / "probe", tracker)
    split = json.loads((tmp_path / "probe" / "label_split.json").read_text())
    # the training scenes scene-0061 and scene-0655 in the (reversed) table's order: 0655, then 0061;
    # SLidR keeps the 2nd (by name it would have been scene-0655)
    assert [t for t in table if t in ("scene-0061", "scene-0655")] == ["scene-0655", "scene-0061"]
    assert split["units_kept"] == ["scene-0061"] and len(split["keys"]) == 3
    assert split["order"] == str(tmp_path / "scene.json")
    assert tracker.tags["hvdistill.split.scenes"] == "scene-0061"
    assert result.metrics["train_scans"] == 3 and result.metrics["val_scans"] == 3  # evaluation untouched
    assert result.steps == 4  # 2 epochs x ceil(3 / 2) batches
    total, labelled, outside = val_points(labelled_shards, "nuscenes", cfg.finetune.point_range)
    assert (result.metrics["points_total"], result.metrics["points"]) == (total, labelled)
    assert result.metrics["points_outside_range"] == outside
    losses = [m["loss/total"] for _, m in tracker.metrics if "loss/total" in m]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert [m["lr/head"] for _, m in tracker.metrics if "lr/head" in m][0] == pytest.approx(
        0.05 * 0.5 * (1 + np.cos(np.pi / 4))
    )
    assert all("lr/trunk" not in m for _, m in tracker.metrics)
    after = result.model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in student.backbone_state_dict().items())
    assert np.isfinite(result.miou)


@pytest.mark.slow
def test_semantickitti_fine_tunes_with_its_19_classes_and_scan_split(labelled_shards, tmp_path):
    over = [f"data.shards=[{labelled_shards}]", *FAST, "finetune.dataset=semantickitti"]
    over += [
        "finetune.max_steps=2",
        "finetune.eval_every=1",
        "finetune.label_fraction=0.5",
        "finetune.lr_trunk=0.05",
    ]
    cfg = load_finetune_config(config_path("tiny.yaml"), over)
    tracker = RecordingTracker()
    result = finetune(cfg, tmp_path / "kitti", tracker)
    assert [s for s, m in tracker.metrics if "val/miou" in m] == [1, 2]  # every step, and the final score
    split = json.loads((tmp_path / "kitti" / "label_split.json").read_text())
    assert split["unit"] == "scan" and split["keys"] == ["00_000000", "00_000002"]  # every 2nd from the first
    assert len(result.metrics["per_class_iou"]) == 19 and "traffic-sign" in result.metrics["per_class_iou"]
    total, labelled, _ = val_points(labelled_shards, "semantickitti", cfg.finetune.point_range)
    assert result.metrics["points"] == labelled and result.metrics["points_total"] == total


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["finetune.label_fraction=0.01", "finetune.scene_table={table}"],
            "keeps no scene of the 2 training scenes",
        ),
        (["finetune.label_fraction=0.5"], "no scene table was found: set finetune.scene_table="),
        (["finetune.val_split=test"], "no nuscenes shards of split 'test'"),
        (["finetune.label_fraction=0.3"], "not 1 / k"),
        (["finetune.backbone=/nowhere/run"], "neither a run directory"),
    ],
)
def test_user_mistakes_end_with_a_message_not_a_traceback(
    labelled_shards, nuscenes_root, tmp_path, capsys, overrides, message
):
    from tests.helpers.world import NUSCENES_VERSION

    overrides = [o.format(table=nuscenes_root / NUSCENES_VERSION) for o in overrides]
    args = [
        config_path("tiny.yaml"),
        f"data.shards=[{labelled_shards}]",
        f"finetune.output_dir={tmp_path}",
        *FAST,
    ]
    code = main([*args, *overrides, "finetune.run_name=mistake"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the run directory was removed again: nothing ran


def test_a_failed_start_removes_the_output_folders_it_created_and_nothing_else(
    labelled_shards, tmp_path, capsys
):
    (tmp_path / "keep").mkdir()
    args = [
        config_path("tiny.yaml"),
        f"data.shards=[{labelled_shards}]",
        *FAST,
        "finetune.backbone=/nowhere/run",
    ]
    assert main([*args, f"finetune.output_dir={tmp_path / 'new' / 'deeper'}"]) == 2
    assert main([*args, f"finetune.output_dir={tmp_path / 'keep'}"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and not list((tmp_path / "keep").iterdir())
    (tmp_path / "file").write_text("x")
    assert main([*args, f"finetune.output_dir={tmp_path / 'file'}"]) == 2
    assert "finetune.output_dir" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


def test_a_second_process_on_the_same_run_directory_stops_at_once(labelled_shards, tmp_path, capsys):
    from hvdistill.dirlock import directory_lock

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    args = [
        config_path("tiny.yaml"),
        f"data.shards=[{labelled_shards}]",
        *FAST,
        f"finetune.output_dir={tmp_path}",
    ]
    with directory_lock(run_dir, "fine-tuning run"):
        assert main([*args, "finetune.run_name=busy", "finetune.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "is being written by another fine-tuning run" in err and f"pid {__import__('os').getpid()}" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["_state"]  # the holder's directory is untouched


def test_no_shards_is_a_clear_error(tmp_path, capsys):
    assert main([config_path("tiny.yaml"), f"finetune.output_dir={tmp_path}", *FAST]) == 2
    assert "set data.shards=[SHARD_DIR]" in capsys.readouterr().err


def test_unusable_val_scans_past_the_tolerated_fraction_stop_the_run(labelled_shards, tmp_path):
    copy, _ = damage_labels(labelled_shards, tmp_path)
    over = [f"data.shards=[{copy}]", *FAST, "finetune.linear_probe=true", "finetune.max_steps=1"]
    cfg = load_finetune_config(config_path("tiny.yaml"), over)
    with pytest.raises(
        RuntimeError, match=r"1 of 3 validation scans were unusable \(.*max_bad_fraction=0.01"
    ):
        finetune(cfg, tmp_path / "strict")
    cfg.finetune.max_bad_fraction = 0.5
    result = finetune(cfg, tmp_path / "tolerant")
    assert (result.metrics["scans"], result.metrics["bad_scans"]) == (2, 1)


def test_a_bug_inside_fine_tuning_keeps_its_traceback(monkeypatch, capsys):
    """main's own catch follows the CLI boundary's rule: a ValueError raised inside a library (a
    bug, not a user mistake) propagates instead of becoming a one-line exit 2."""
    import hvdistill.eval.run as ft_run

    def broken(cfg):
        return np.zeros(2).reshape(3)  # numpy raises ValueError

    monkeypatch.setattr(ft_run, "load_finetune_config", lambda config, overrides: None)
    monkeypatch.setattr(ft_run, "run", broken)
    with pytest.raises(ValueError, match="reshape"):
        main(["finetune.max_steps=1"])
    assert "hvdistill finetune:" not in capsys.readouterr().err
