"""Segmentation scores: the confusion matrix, per-class IoU and mIoU, written as JSON and CSV.

`ConfusionMatrix` accumulates (C, C) int64 counts, rows = ground truth, columns = prediction,
over as many batches as needed (on the batch's device, kept on the CPU). Points whose ground
truth is the ignore label are not counted at all. A prediction may be the ignore label: that is
how a point the model gave no class (e.g. outside the voxel range, docs/finetuning.md) is
counted, as a miss of its true class (a false negative) and a false positive of no class.

IoU of class c = TP / (TP + FP + FN) = cm[c, c] / (row c + column c - cm[c, c]); a class absent
from both ground truth and predictions has no IoU (0 / 0, reported as `null`).

The class set of the mIoU is fixed by the evaluated data, never by the predictions
(`finetune.miou_classes`):
- `ground_truth` (default): the classes other than the ignore label that occur in the ground
  truth of the evaluated split. A class nobody labelled stays out even when predicted (those
  predictions still count, as misses of the points' true classes), so one stray prediction
  cannot add a 0 to the mean. On the full nuScenes and SemanticKITTI validation sets every class
  occurs, and the set is the one both published evaluators average (nuscenes-devkit's
  lidarseg `nanmean`, semantic-kitti-api's `iouEval`).
- `all`: every class of the label map but the ignore label, an absent class counting 0: exactly
  semantic-kitti-api's `iouEval.getIoU` on any split.
`classes_in_mean` (how many classes were averaged) and `miou_classes` (the rule) go with every
mIoU; `predicted_absent_classes` names the classes predicted but absent from the ground truth.
(SLidR's code and nuscenes-devkit average the classes of ground truth or predictions, a set that
changes with the predictions: on a split of two classes one stray point predicted as an absent third
class turns an mIoU of 1.0 into 0.66 under that rule, 0.99 under this one.)
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvdistill.storage import write_atomic

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.csv"
PER_CLASS_FILE = "per_class_iou.csv"


class ConfusionMatrix:
    """(C, C) counts of (ground truth, prediction) pairs; the ignore label's row stays empty."""

    def __init__(self, num_classes: int, ignore_index: int = 0):
        if num_classes < 2 or not 0 <= ignore_index < num_classes:
            raise ValueError(f"need >= 2 classes and ignore_index in [0, {num_classes}), got {ignore_index}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)  # (C, C)

    def update(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count (N,) predictions against (N,) ground-truth classes; ignore-label targets are dropped."""
        pred = torch.as_tensor(prediction).reshape(-1).long()  # (N,)
        gt = torch.as_tensor(target).reshape(-1).long().to(pred.device)  # (N,)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred.numel()} predictions for {gt.numel()} labels")
        keep = gt != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        c = self.num_classes
        for name, v in (("prediction", pred), ("label", gt)):
            if v.numel() and (int(v.min()) < 0 or int(v.max()) >= c):
                raise ValueError(f"a {name} lies outside [0, {c}): min {int(v.min())}, max {int(v.max())}")
        flat = torch.bincount(gt * c + pred, minlength=c * c)  # (C * C,)
        self.counts += flat.reshape(c, c).cpu().numpy()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix of the same classes (e.g. from another process)."""
        if other.counts.shape != self.counts.shape or other.ignore_index != self.ignore_index:
            raise ValueError("confusion matrices of different classes cannot be merged")
        self.counts += other.counts

    @property
    def points(self) -> int:
        """Points counted (ignore-label points excluded)."""
        return int(self.counts.sum())


def iou_per_class(counts: np.ndarray, ignore_index: int = 0) -> np.ndarray:
    """(C,) float64 IoU per class; NaN for the ignore label and for classes absent from both
    ground truth and predictions."""
    counts = np.asarray(counts, dtype=np.float64)  # (C, C)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    out = np.full(len(tp), np.nan)
    present = union > 0
    out[present] = tp[present] / union[present]
    out[ignore_index] = np.nan
    return out


CLASS_SETS = ("ground_truth", "all")


def classes_in_mean(counts: np.ndarray, ignore_index: int = 0, class_set: str = "ground_truth") -> np.ndarray:
    """(C,) bool: the classes the mIoU averages under `class_set` (see the module docstring)."""
    if class_set not in CLASS_SETS:
        raise ValueError(f"mIoU class set {class_set!r} is not one of {CLASS_SETS}")
    counts = np.asarray(counts)
    chosen = counts.sum(1) > 0 if class_set == "ground_truth" else np.ones(len(counts), dtype=bool)
    chosen[ignore_index] = False
    return chosen


def set_mean_iou(counts: np.ndarray, ignore_index: int = 0, class_set: str = "ground_truth") -> float:
    """mIoU over the class set (a class of the set without an IoU counts 0); NaN for an empty set."""
    chosen = classes_in_mean(counts, ignore_index, class_set)
    if not chosen.any():
        return math.nan
    per_class = np.nan_to_num(iou_per_class(counts, ignore_index), nan=0.0)
    return float(per_class[chosen].mean())


def scores(
    cm: ConfusionMatrix, class_names: Sequence[str], class_set: str = "ground_truth"
) -> dict[str, Any]:
    """mIoU over `class_set`, per-class IoU (None where undefined), classes averaged, accuracy, points."""
    if len(class_names) != cm.num_classes:
        raise ValueError(f"{len(class_names)} class names for {cm.num_classes} classes")
    per_class = iou_per_class(cm.counts, cm.ignore_index)
    chosen = classes_in_mean(cm.counts, cm.ignore_index, class_set)
    predicted = cm.counts.sum(0) > 0
    absent = [
        name
        for i, name in enumerate(class_names)
        if i != cm.ignore_index and predicted[i] and cm.counts[i].sum() == 0
    ]
    points = cm.points
    return {
        "miou": set_mean_iou(cm.counts, cm.ignore_index, class_set),
        "classes_in_mean": int(chosen.sum()),
        "miou_classes": class_set,
        "predicted_absent_classes": absent,
        "accuracy": float(np.trace(cm.counts) / points) if points else math.nan,
        "points": points,
        "ignore_index": cm.ignore_index,
        "per_class_iou": {
            name: (None if np.isnan(v) else float(v))
            for i, (name, v) in enumerate(zip(class_names, per_class))
            if i != cm.ignore_index
        },
    }


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def save_scores(
    out_dir: Path,
    cm: ConfusionMatrix,
    class_names: Sequence[str],
    extra: dict[str, Any] | None = None,
    class_set: str = "ground_truth",
) -> dict[str, Path]:
    """Write confusion_matrix.csv, per_class_iou.csv and, last, metrics.json (scores + `extra`) into
    `out_dir`, each atomically: a metrics.json (what marks a run finished) is never half-written.
    Returns {"metrics": path, "confusion_matrix": path, "per_class_iou": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**scores(cm, class_names, class_set), **(extra or {})}
    paths = {
        "metrics": out_dir / METRICS_FILE,
        "confusion_matrix": out_dir / CONFUSION_FILE,
        "per_class_iou": out_dir / PER_CLASS_FILE,
    }
    confusion = [["ground_truth \\ prediction", *class_names]]
    confusion += [[name, *(int(v) for v in row)] for name, row in zip(class_names, cm.counts)]
    write_atomic(paths["confusion_matrix"], _csv_text(confusion))
    per_class = iou_per_class(cm.counts, cm.ignore_index)
    chosen = classes_in_mean(cm.counts, cm.ignore_index, class_set)
    table = [["class_id", "class", "iou", "ground_truth_points", "predicted_points", "in_mean"]]
    for i, name in enumerate(class_names):
        if i != cm.ignore_index:
            iou = "" if np.isnan(per_class[i]) else f"{per_class[i]:.6f}"
            counts = [int(cm.counts[i].sum()), int(cm.counts[:, i].sum())]
            table.append([i, name, iou, *counts, str(bool(chosen[i])).lower()])
    write_atomic(paths["per_class_iou"], _csv_text(table))
    write_atomic(paths["metrics"], json.dumps(json_safe(result), indent=2, sort_keys=True) + "\n")
    return paths


def load_confusion(path: Path, ignore_index: int = 0) -> tuple[ConfusionMatrix, list[str]]:
    """Read a confusion_matrix.csv back (for reports): the matrix and the class names."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    cm = ConfusionMatrix(len(names), ignore_index)
    cm.counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    if cm.counts.shape != (len(names), len(names)):
        raise ValueError(f"{path}: not a {len(names)} x {len(names)} confusion matrix")
    return cm, names
