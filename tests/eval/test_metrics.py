"""Confusion matrix, per-class IoU and mIoU against a hand-computed example; the class-set rule of the
mIoU; files written and read back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hvdistill.eval.metrics import (
    ConfusionMatrix,
    classes_in_mean,
    iou_per_class,
    load_confusion,
    save_scores,
    scores,
)

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
