"""Segmentation scores: the confusion matrix, per-class IoU and mIoU, written as JSON and CSV.

`ConfusionMatrix` accumulates (C, C) int64 counts, rows = ground truth, columns = prediction,
over as many batches as needed (on the batch's device, kept on the CPU). Points whose ground
truth is the ignore label are not counted at all. A prediction may be the ignore label: that is
how a point the model gave no class (e.g. outside the voxel range, docs/finetuning.md) is
counted, as a miss of its true class (a false negative) and a false positive of no class.

IoU of class c = TP / (TP + FP + FN) = cm[c, c] / (row c + column c - cm[c, c]).
mIoU = the mean IoU over the classes other than the ignore label that occur in the ground truth
or in the predictions. A class absent from both has no IoU (0 / 0): it is reported as `null` and
left out of the mean, and the number of classes averaged is reported beside the mIoU. (SLidR's
code counts such a class as IoU 1.0, which raises the mean on small validation sets; the full
nuScenes and SemanticKITTI validation sets hold every class, where both rules agree.)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def mean_iou(per_class: np.ndarray) -> float:
    """Mean of the classes that have an IoU (NaN entries left out); NaN when none has one."""
    valid = ~np.isnan(per_class)
    return float(per_class[valid].mean()) if valid.any() else math.nan


def scores(cm: ConfusionMatrix, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU (None where undefined), classes averaged, accuracy and point count."""
    if len(class_names) != cm.num_classes:
        raise ValueError(f"{len(class_names)} class names for {cm.num_classes} classes")
    per_class = iou_per_class(cm.counts, cm.ignore_index)
    miou = mean_iou(per_class)
    points = cm.points
    return {
        "miou": miou,
        "classes_in_mean": int((~np.isnan(per_class)).sum()),
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


def save_scores(
    out_dir: Path, cm: ConfusionMatrix, class_names: Sequence[str], extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write metrics.json (scores + `extra`), confusion_matrix.csv and per_class_iou.csv into
    `out_dir`; returns {"metrics": path, "confusion_matrix": path, "per_class_iou": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**scores(cm, class_names), **(extra or {})}
    paths = {
        "metrics": out_dir / METRICS_FILE,
        "confusion_matrix": out_dir / CONFUSION_FILE,
        "per_class_iou": out_dir / PER_CLASS_FILE,
    }
    paths["metrics"].write_text(json.dumps(json_safe(result), indent=2, sort_keys=True) + "\n")
    with open(paths["confusion_matrix"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground_truth \\ prediction", *class_names])
        for name, row in zip(class_names, cm.counts):
            writer.writerow([name, *(int(v) for v in row)])
    per_class = iou_per_class(cm.counts, cm.ignore_index)
    with open(paths["per_class_iou"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "class", "iou", "ground_truth_points", "predicted_points"])
        for i, name in enumerate(class_names):
            if i != cm.ignore_index:
                iou = "" if np.isnan(per_class[i]) else f"{per_class[i]:.6f}"
                writer.writerow([i, name, iou, int(cm.counts[i].sum()), int(cm.counts[:, i].sum())])
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
