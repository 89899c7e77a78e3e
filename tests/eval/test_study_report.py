"""The study report: which pairs it decides, how labels map to methods, the tables it writes from
the readouts' records, and a damaged study.json refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hvdistill.eval.study_report import Record, comparisons, load_summary, method_of, study_markdown


def test_the_decided_pairs_are_each_variant_vs_ipv_random_init_and_its_random_teacher():
    pairs = comparisons(["full", "ipv_depth", "ipv", "full_random_teacher"])
    assert pairs[:2] == [("full", "ipv"), ("ipv_depth", "ipv")]
    assert ("full_random_teacher", "random") in pairs and ("ipv", "random") in pairs
    assert pairs[-1] == ("full", "full_random_teacher")
    assert ("full_random_teacher", "ipv") not in pairs


def test_labels_name_their_method_and_seed():
    assert method_of("study-full_random_teacher-s12") == ("full_random_teacher", 12)
    assert method_of("random") == ("random", None)
    assert method_of("my-run") == ("my-run", None)


def _record(method: str, seed: int, miou: float, in_view: float, rng: np.random.Generator) -> Record:
    counts = np.zeros((8, 3, 3), dtype=np.int64)  # 8 held-out scans, 2 classes + ignore
    for s in range(8):
        for c in (1, 2):
            right = rng.binomial(100, miou)
            counts[s, c, c], counts[s, c, 3 - c] = right, 100 - right
    metrics = {"miou": miou, "miou_in_view": in_view, "miou_out_view": miou, "converged": 1.0}
    return Record("fine-tune 1%", method, seed, metrics, [f"k{i}" for i in range(8)], counts)


def test_the_tables_show_intervals_verdicts_and_strata(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):
        records.append(_record("random", seed, 0.30 + jitter, 0.3, rng))
        records.append(_record("ipv", seed, 0.80 + jitter, 0.8 + jitter, rng))
        records.append(_record("full", seed, 0.80 - jitter, 0.9, rng))
    summary = tmp_path / "study.json"
    summary.write_text(json.dumps({"sweeps": [], "methods": ["full", "ipv"], "study_teacher": "classes"}))
    text = study_markdown(summary, records)
    assert "| random | 30.00 +- " in text and "(n=3)" in text
    line = next(x for x in text.splitlines() if x.startswith("| ipv - random |"))
    assert line.endswith("| ipv better |")  # 50 points on every seed and every scan draw
    line = next(x for x in text.splitlines() if x.startswith("| full - ipv |"))
    assert line.endswith("| not shown |")  # +-1 point around 0 over the seeds
    assert "in_view" in text and "out_view" in text
    assert "| full | 3 of 3 |" in text  # converged runs counted


@pytest.mark.parametrize("damaged", ["{", "[]", json.dumps({"sweeps": [{"kind": "probe"}]})])
def test_a_damaged_summary_is_refused_with_one_line(tmp_path, damaged):
    (tmp_path / "study.json").write_text(damaged)
    with pytest.raises(ValueError, match="study"):
        load_summary(tmp_path)


def test_the_teacher_line_reads_either_target():
    from hvdistill.eval.study_report import teacher_line

    classes = {"target": "classes", "steps": 300, "val": {"miou": 0.413, "accuracy": 0.886}}
    assert teacher_line(classes) == "teacher (classes, 300 steps): held-out pixel mIoU 41.3%, accuracy 88.6%"
    geometry = {
        "target": "geometry",
        "steps": 100,
        "val": {"depth_bin_accuracy": 0.09, "normal_angle_mean_deg": 52.4},
    }
    assert "class-free" in teacher_line(geometry) and "52.4 deg" in teacher_line(geometry)
    assert teacher_line(None) == "teacher: no score recorded"
