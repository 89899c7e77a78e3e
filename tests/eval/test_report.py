"""The sweep report from a synthetic MLflow store: known mIoU values in, hand-computed means / stds out."""

from __future__ import annotations

import csv
import statistics

from hvdistill.config import TrackingConfig
from hvdistill.eval.report import TAG_PREFIX, TRIAL_TAG, main, report
from hvdistill.tracking import artifact_paths, prepare_tracking, run_record, start_tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (checkpoint label, fraction, seed) -> mIoU
SCORES = {
    ("random", 0.1, 0): 0.20, ("random", 0.1, 1): 0.24, ("random", 1.0, 0): 0.50, ("random", 1.0, 1): 0.56,
    ("pre", 0.1, 0): 0.31, ("pre", 0.1, 1): 0.35, ("pre", 1.0, 0): 0.61, ("pre", 1.0, 1): 0.60,
}  # fmt: skip


def synthetic_sweep(tmp_path, parent_status: str = "FINISHED"):
    """A parent run with 8 finished children (tags and metrics as a sweep logs them), one FAILED
    child, one older finished duplicate of a trial (the newest must win) and one FINISHED child
    that never logged val/miou (it does not count)."""
    cfg = TrackingConfig(enabled=True, uri=f"sqlite:///{tmp_path}/mlruns.db")
    uri = prepare_tracking(cfg, tmp_path)
    parent = start_tracker(cfg, tmp_path, is_main=True, run_name="sweep")

    def child(label, fraction, seed, miou, status="FINISHED", classes=16):
        tags = {
            TRIAL_TAG: f"{label}-{fraction}-{seed}",
            TAG_PREFIX + "label": label,
            TAG_PREFIX + "label_fraction": str(fraction),
            TAG_PREFIX + "seed": str(seed),
            TAG_PREFIX + "lr_trunk": "0.02",
            TAG_PREFIX + "lr_head": "2.0",
        }
        with start_tracker(cfg, tmp_path, is_main=True, parent_run_id=parent.run_id, tags=tags) as t:
            if miou is None:  # a run that ended without its score
                return
            t.log_metrics({"val/miou": miou, "val/classes_in_mean": classes}, 1)
            t.log_dict(
                {"miou": miou, "per_class_iou": {"car": miou, "road": 1 - miou, "bike": None}}, "metrics.json"
            )
            if status != "FINISHED":
                t.end(status)

    child("random", 0.1, 0, 0.99)  # an older run of a trial: replaced by the newer one below
    for (label, fraction, seed), miou in SCORES.items():
        child(label, fraction, seed, miou)
    child("pre", 1.0, 2, 0.01, status="FAILED")  # a failed trial is not counted
    child("pre", 0.1, 3, None)  # FINISHED without val/miou: not a result
    parent.end(parent_status)
    return uri, parent.run_id


def test_report_tables_plot_and_artifacts_match_hand_computed_values(tmp_path, capsys):
    uri, parent_id = synthetic_sweep(tmp_path / "store")
    paths = report(uri, parent_id, tmp_path / "out")
    rows = list(csv.DictReader(paths["summary_csv"].open()))
    assert len(rows) == 4
    for row in rows:
        values = [
            v
            for (lab, f, _), v in SCORES.items()
            if lab == row["checkpoint"] and f == float(row["label_fraction"])
        ]
        assert float(row["miou_mean"]) == round(statistics.fmean(values), 6)
        assert abs(float(row["miou_std"]) - statistics.stdev(values)) < 1e-6 and row["n"] == "2"
    md = paths["summary_md"].read_text()
    # 0.31/0.35 and 0.61/0.60 by hand, each with the number of classes its mIoU averages
    assert "| pre | 33.00 +- 2.83 (n=2, 16 classes) | 60.50 +- 0.71 (n=2, 16 classes) |" in md
    assert "| random | 22.00 +- 2.83 (n=2, 16 classes) | 53.00 +- 4.24 (n=2, 16 classes) |" in md
    assert {r["classes_in_mean"] for r in rows} == {"16"}
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC and paths["plot"].stat().st_size > 1000
    per_class = {
        (r["checkpoint"], r["label_fraction"]): r for r in csv.DictReader(paths["per_class_csv"].open())
    }
    assert (
        abs(float(per_class[("random", "0.1")]["road"]) - 0.78) < 1e-6
        and per_class[("pre", "1")]["bike"] == ""
    )
    logged = artifact_paths(uri, parent_id)
    assert {f"report/{p.name}" for p in paths.values()} <= set(logged)
    # the verb regenerates the same table from MLflow alone
    assert main([parent_id, "--tracking-uri", uri, "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert md in out and f"report: plot {tmp_path / 'again' / 'label_efficiency.png'}" in out
    assert (tmp_path / "again" / "summary.csv").read_text() == paths["summary_csv"].read_text()


def test_report_of_a_run_without_trials_is_a_clear_error(tmp_path, capsys):
    cfg = TrackingConfig(enabled=True, uri=f"sqlite:///{tmp_path}/mlruns.db")
    uri = prepare_tracking(cfg, tmp_path)
    with start_tracker(cfg, tmp_path, is_main=True) as parent:
        pass
    assert main([parent.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    assert "no finished trials" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # neither a sweep directory nor a run id with a store


def test_a_report_on_a_failed_sweep_adds_its_files_and_leaves_it_failed(tmp_path, capsys):
    uri, parent_id = synthetic_sweep(tmp_path / "store", parent_status="FAILED")
    assert main([parent_id, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0
    record = run_record(uri, parent_id)
    assert record["status"] == "FAILED" and "hvdistill.resumes" not in record["tags"]
    assert "report/summary.md" in artifact_paths(uri, parent_id)
