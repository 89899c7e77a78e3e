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

An `Evaluation` (hvdistill/eval/evaluate.py) adds strata and per-scan matrices. A stratum's mIoU
follows the same class-set rule on the stratum's own matrix (under `ground_truth`: the classes
labelled in that stratum), reported with its `classes_in_mean` and `points`; an empty stratum has
mIoU NaN (null in JSON). `save_evaluation` writes them into metrics.json ("strata") and the
per-scan matrices as confusion_per_scan.npy ((S, C, C) int64, never pickled) with
confusion_per_scan.json (the S keys in row order, C and the .npy's SHA-256, so a pair of files
from two different saves is refused); `load_per_scan` reads them back checking all of it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hvdistill.data.sample_checks import SchemaError
from hvdistill.data.schema import decode_npy
from hvdistill.storage import write_atomic
from hvdistill.tracking_values import check_metric_name

if TYPE_CHECKING:
    from hvdistill.eval.evaluate import Evaluation

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.csv"
PER_CLASS_FILE = "per_class_iou.csv"
PER_SCAN_FILE = "confusion_per_scan.npy"
PER_SCAN_KEYS_FILE = "confusion_per_scan.json"
METRIC_NAME_LIMIT = 250  # MLflow's MAX_ENTITY_KEY_LENGTH (mlflow is imported only by tracking.py)


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


def stratum_scores(cm: ConfusionMatrix, class_set: str = "ground_truth") -> dict[str, Any]:
    """{"miou", "classes_in_mean", "points"} of one stratum's matrix (mIoU NaN when it is empty)."""
    chosen = classes_in_mean(cm.counts, cm.ignore_index, class_set)
    return {
        "miou": set_mean_iou(cm.counts, cm.ignore_index, class_set),
        "classes_in_mean": int(chosen.sum()),
        "points": cm.points,
    }


def evaluation_scores(
    ev: Evaluation, class_names: Sequence[str], class_set: str = "ground_truth"
) -> dict[str, Any]:
    """`scores` of the overall matrix plus {"strata": {name: stratum_scores}}."""
    strata = {name: stratum_scores(cm, class_set) for name, cm in ev.strata.items()}
    return {**scores(ev.confusion, class_names, class_set), "strata": strata}


def stratum_metrics(ev: Evaluation, class_set: str = "ground_truth", prefix: str = "val") -> dict[str, float]:
    """Flat MLflow metrics: <prefix>/miou, accuracy, classes_in_mean, loss, and per stratum
    <prefix>/miou_<stratum> and <prefix>/points_<stratum>. NaN where undefined (an empty split or
    stratum): the caller decides whether to log it."""
    overall = stratum_scores(ev.confusion, class_set)
    counts = ev.confusion.counts
    out = {
        f"{prefix}/miou": overall["miou"],
        f"{prefix}/accuracy": float(np.trace(counts) / overall["points"]) if overall["points"] else math.nan,
        f"{prefix}/classes_in_mean": float(overall["classes_in_mean"]),
        f"{prefix}/loss": float(ev.stats.get("loss", math.nan)),
    }
    for name, cm in ev.strata.items():
        stratum = stratum_scores(cm, class_set)
        out[f"{prefix}/miou_{name}"] = stratum["miou"]
        out[f"{prefix}/points_{name}"] = float(stratum["points"])
    for name in out:
        check_metric_name(name, METRIC_NAME_LIMIT)
    return out


def save_evaluation(
    out_dir: Path,
    ev: Evaluation,
    class_names: Sequence[str],
    extra: dict[str, Any] | None = None,
    class_set: str = "ground_truth",
) -> dict[str, Path]:
    """`save_scores` with the strata in metrics.json, after the per-scan files (metrics.json last).
    Returns save_scores' paths plus "confusion_per_scan" and "confusion_per_scan_keys"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = ev.confusion.num_classes
    keys = list(ev.per_scan)
    counts = np.zeros((len(keys), c, c), dtype=np.int64)  # (S, C, C)
    for i, key in enumerate(keys):
        counts[i] = ev.per_scan[key]
    buffer = io.BytesIO()
    np.save(buffer, counts, allow_pickle=False)
    data = buffer.getvalue()
    index = {"keys": keys, "scans": len(keys), "num_classes": c, "sha256": hashlib.sha256(data).hexdigest()}
    paths = {
        "confusion_per_scan": out_dir / PER_SCAN_FILE,
        "confusion_per_scan_keys": out_dir / PER_SCAN_KEYS_FILE,
    }
    write_atomic(paths["confusion_per_scan"], data)
    write_atomic(paths["confusion_per_scan_keys"], json.dumps(index, indent=1) + "\n")
    strata = {name: stratum_scores(cm, class_set) for name, cm in ev.strata.items()}
    return {
        **save_scores(out_dir, ev.confusion, class_names, {"strata": strata, **(extra or {})}, class_set),
        **paths,
    }


def load_per_scan(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """(scan keys, (S, C, C) int64 counts) written by `save_evaluation`; ValueError naming the file
    and the defect for anything else (unreadable, pickled, wrong dtype or shape, negative counts,
    keys repeated or not matching the rows, the two files from different saves)."""
    index_path, npy_path = Path(run_dir) / PER_SCAN_KEYS_FILE, Path(run_dir) / PER_SCAN_FILE
    try:
        index = json.loads(index_path.read_bytes())
        data = npy_path.read_bytes()
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{run_dir}: per-scan confusion files unreadable: {type(e).__name__}: {e}") from e
    keys = index.get("keys") if isinstance(index, dict) else None
    c = index.get("num_classes") if isinstance(index, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or type(c) is not int or c < 2:
        raise ValueError(f"{index_path}: not a per-scan index (keys: list of str, num_classes: int >= 2)")
    if len(set(keys)) != len(keys) or index.get("scans") != len(keys):
        raise ValueError(
            f"{index_path}: {len(keys)} keys, {len(set(keys))} distinct, index says {index.get('scans')}"
        )
    if index.get("sha256") != hashlib.sha256(data).hexdigest():
        raise ValueError(f"{npy_path}: its SHA-256 is not the one {index_path.name} records (another save?)")
    try:
        counts = decode_npy(data, np.int64, 3, member=PER_SCAN_FILE)  # (S, C, C)
    except SchemaError as e:
        raise ValueError(f"{npy_path}: {e}") from e
    if counts.shape != (len(keys), c, c):
        raise ValueError(f"{npy_path}: shape {counts.shape}, expected ({len(keys)}, {c}, {c}) for its keys")
    if (counts < 0).any():
        raise ValueError(f"{npy_path}: negative counts")
    return keys, counts
