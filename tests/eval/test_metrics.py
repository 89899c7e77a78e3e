"""Confusion matrix, per-class IoU and mIoU against a hand-computed example; the class-set rule of the
mIoU; files written and read back; stratum scores, their MLflow names, the per-scan file and its checks."""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pytest
import torch

from hvdistill.eval.evaluate import Evaluation
from hvdistill.eval.metrics import (
    PER_SCAN_FILE,
    PER_SCAN_KEYS_FILE,
    ConfusionMatrix,
    classes_in_mean,
    evaluation_scores,
    iou_per_class,
    load_confusion,
    load_per_scan,
    save_evaluation,
    save_scores,
    scores,
    stratum_metrics,
)
from hvdistill.eval.strata import stratum_names
from hvdistill.tracking_values import check_metric_name

NAMES = ["ignore", "road", "car", "tree", "bus"]  # class 4 occurs nowhere
GT = [1, 1, 1, 2, 2, 3, 0, 0, 1]
PRED = [1, 1, 2, 2, 1, 1, 3, 2, 0]  # the last point got no class (e.g. outside the voxel range)


def test_confusion_matrix_and_miou_equal_the_hand_computed_example():
    cm = ConfusionMatrix(5, ignore_index=0)
    cm.update(torch.tensor(PRED), torch.tensor(GT))
    # rows = ground truth (ignore-label points dropped), columns = prediction
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[1, [0, 1, 2]] = [1, 2, 1]
    expected[2, [1, 2]] = [1, 1]
    expected[3, 1] = 1
    np.testing.assert_array_equal(cm.counts, expected)
    # IoU_road = 2 / (4 + 4 - 2), IoU_car = 1 / (2 + 2 - 1), IoU_tree = 0 / 1, bus absent: no IoU
    iou = iou_per_class(cm.counts, 0)
    np.testing.assert_allclose(iou[1:4], [1 / 3, 1 / 3, 0.0])
    assert math.isnan(iou[0]) and math.isnan(iou[4])
    s = scores(cm, NAMES)
    assert s["miou"] == pytest.approx(2 / 9)
    assert s["classes_in_mean"] == 3 and s["points"] == 7
    assert s["accuracy"] == pytest.approx(3 / 7)
    assert s["per_class_iou"] == {
        "road": pytest.approx(1 / 3),
        "car": pytest.approx(1 / 3),
        "tree": 0.0,
        "bus": None,
    }


def test_accumulating_batches_equals_one_update_and_accepts_numpy():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 6, 1000), rng.integers(0, 6, 1000)
    whole = ConfusionMatrix(6)
    whole.update(pred, gt)
    parts = ConfusionMatrix(6)
    for lo in range(0, 1000, 137):
        parts.update(torch.from_numpy(pred[lo : lo + 137]), torch.from_numpy(gt[lo : lo + 137]))
    np.testing.assert_array_equal(whole.counts, parts.counts)
    merged = ConfusionMatrix(6)
    merged.merge(whole)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert whole.points == int((gt != 0).sum())


def test_out_of_range_values_and_shape_mismatch_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction lies outside"):
        cm.update(torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="label lies outside"):
        cm.update(torch.tensor([1]), torch.tensor([7]))
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        cm.update(torch.tensor([1, 2]), torch.tensor([1]))
    assert cm.points == 0


def test_scores_are_saved_as_json_and_csv_and_read_back(tmp_path):
    cm = ConfusionMatrix(5)
    cm.update(torch.tensor(PRED), torch.tensor(GT))
    paths = save_scores(tmp_path, cm, NAMES, extra={"split": "val"})
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["miou"] == pytest.approx(2 / 9) and metrics["split"] == "val"
    assert metrics["per_class_iou"]["bus"] is None
    rows = paths["per_class_iou"].read_text().splitlines()
    assert rows[0].startswith("class_id,class,iou") and rows[4] == "4,bus,,0,0,false"
    assert rows[1] == "1,road,0.333333,4,4,true"
    back, names = load_confusion(paths["confusion_matrix"])
    assert names == NAMES
    np.testing.assert_array_equal(back.counts, cm.counts)


def test_a_stray_prediction_of_an_absent_class_does_not_change_the_class_set():
    # a perfect prediction of road and car; bus never occurs in the ground truth
    gt = torch.tensor([1] * 50 + [2] * 50)
    perfect = ConfusionMatrix(5)
    perfect.update(gt.clone(), gt)
    assert scores(perfect, NAMES)["miou"] == 1.0 and scores(perfect, NAMES)["classes_in_mean"] == 2
    stray = gt.clone()
    stray[0] = 4  # one road point predicted as bus
    cm = ConfusionMatrix(5)
    cm.update(stray, gt)
    s = scores(cm, NAMES)
    # bus stays out of the mean (the union rule would add its 0: (49/50 + 1 + 0) / 3 = 0.66);
    # the stray point still costs road a true positive
    assert s["classes_in_mean"] == 2 and s["miou_classes"] == "ground_truth"
    assert s["miou"] == pytest.approx((49 / 50 + 1) / 2)
    assert s["predicted_absent_classes"] == ["bus"] and s["per_class_iou"]["bus"] == 0.0


def test_the_all_classes_rule_is_semantic_kitti_api_and_counts_absent_classes_as_zero():
    cm = ConfusionMatrix(5)
    cm.update(torch.tensor(PRED), torch.tensor(GT))
    s = scores(cm, NAMES, "all")
    # road 1/3, car 1/3, tree 0, bus absent from both: 0 under iouEval's fixed set of 4 classes
    assert s["classes_in_mean"] == 4 and s["miou"] == pytest.approx((1 / 3 + 1 / 3) / 4)
    assert classes_in_mean(cm.counts, 0, "all").tolist() == [False, True, True, True, True]
    with pytest.raises(ValueError, match="not one of"):
        scores(cm, NAMES, "union")


def _evaluation() -> Evaluation:
    """PRED / GT as two scans (the first 5 points, the last 4); in_view = scan a, range_0_20 = all."""

    def matrix(lo: int, hi: int) -> ConfusionMatrix:
        cm = ConfusionMatrix(5)
        cm.update(torch.tensor(PRED[lo:hi]), torch.tensor(GT[lo:hi]))
        return cm

    a, b, overall, empty = matrix(0, 5), matrix(5, 9), matrix(0, 9), ConfusionMatrix(5)
    strata = dict(zip(stratum_names([20.0, 40.0]), [a, empty, overall, empty, empty]))
    per_scan = {"scan-a": a.counts, "scan-b": b.counts}
    return Evaluation(overall, strata, per_scan, {"loss": 0.75, "scans": 2})


def test_evaluation_scores_and_mlflow_metrics_carry_every_stratum():
    ev = _evaluation()
    s = evaluation_scores(ev, NAMES)
    assert s["miou"] == pytest.approx(2 / 9) and list(s["strata"]) == stratum_names([20.0, 40.0])
    assert s["strata"]["in_view"] == {
        "miou": scores(ev.strata["in_view"], NAMES)["miou"],
        "classes_in_mean": 2,
        "points": 5,
    }
    assert math.isnan(s["strata"]["out_view"]["miou"]) and s["strata"]["out_view"]["points"] == 0
    m = stratum_metrics(ev)
    assert m["val/miou"] == pytest.approx(2 / 9) and m["val/loss"] == 0.75 and m["val/classes_in_mean"] == 3
    assert m["val/miou_range_0_20"] == m["val/miou"] and m["val/points_in_view"] == 5.0
    expected = {"val/miou", "val/accuracy", "val/classes_in_mean", "val/loss"}
    for name in stratum_names([20.0, 40.0]):
        expected |= {f"val/miou_{name}", f"val/points_{name}"}
    assert set(m) == expected and all(isinstance(v, float) for v in m.values())
    for name in stratum_metrics(ev, prefix="probe/val"):
        check_metric_name(name, 250)


def test_the_per_scan_file_round_trips_and_metrics_json_has_the_strata(tmp_path):
    ev = _evaluation()
    paths = save_evaluation(tmp_path, ev, NAMES, {"split": "val", **ev.stats})
    keys, counts = load_per_scan(tmp_path)
    assert keys == ["scan-a", "scan-b"] and counts.dtype == np.int64 and counts.shape == (2, 5, 5)
    np.testing.assert_array_equal(counts.sum(0), ev.confusion.counts)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["strata"]["in_view"]["points"] == 5 and metrics["strata"]["out_view"]["miou"] is None
    assert metrics["loss"] == 0.75 and metrics["split"] == "val"
    assert paths["confusion_per_scan"].name == PER_SCAN_FILE and paths["per_class_iou"].exists()


def _rewrite(run_dir, array: np.ndarray, original: dict, **index) -> None:
    """Replace the .npy (pickle allowed) and its index (`original` with `index` changes), the
    index's SHA-256 matching the new bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    (run_dir / PER_SCAN_FILE).write_bytes(buffer.getvalue())
    new = {**original, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), **index}
    (run_dir / PER_SCAN_KEYS_FILE).write_text(json.dumps(new))


def test_a_damaged_per_scan_file_is_refused(tmp_path):
    save_evaluation(tmp_path, _evaluation(), NAMES)
    _, counts = load_per_scan(tmp_path)
    original = json.loads((tmp_path / PER_SCAN_KEYS_FILE).read_text())
    npy = tmp_path / PER_SCAN_FILE
    npy.write_bytes(npy.read_bytes()[:-8] + np.int64(7).tobytes())  # a count changed after the save
    with pytest.raises(ValueError, match="SHA-256 is not the one"):
        load_per_scan(tmp_path)
    cases = [
        (counts.astype(np.int32), {}, "expected C-order int64"),
        (np.array([{"a": 1}], dtype=object), {}, "expected C-order int64"),
        (-counts, {}, "negative counts"),
        (counts[:1], {}, r"shape \(1, 5, 5\), expected \(2, 5, 5\)"),
        (counts, {"keys": ["scan-a", "scan-a"]}, "2 keys, 1 distinct"),
        (counts, {"scans": 3}, "index says 3"),
        (counts, {"num_classes": "5"}, "not a per-scan index"),
        (counts.reshape(2, 25), {}, "with 3 dims"),
    ]
    for array, index, message in cases:
        _rewrite(tmp_path, array, original, **index)
        with pytest.raises(ValueError, match=message):
            load_per_scan(tmp_path)
    (tmp_path / PER_SCAN_KEYS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_per_scan(tmp_path)
