"""Per-point evaluation of a segmentation model over a whole split: every point of every scan counted.

The model predicts per voxel (argmax over the classes, the ignore class excluded); each point
takes its voxel's prediction through the voxel inverse index. A point outside
`finetune.point_range` has no voxel and therefore no prediction: it is counted as predicted
"ignore", i.e. as a miss (false negative) of its true class, never dropped, so a range that
does not cover the data lowers the score visibly and `points_outside_range` says by how much.
Points labelled ignore (0) are not scored, as in every benchmark. A scan that cannot be read is
counted in `bad_scans` (its points cannot be scored: a corrupt scan has no trustworthy labels).

An `Evaluation` holds, besides the overall confusion matrix:
- one matrix per stratum (hvdistill/eval/strata.py: in / out of camera view, range bins of
  `finetune.range_edges`); a scan without pairs.npy is in no view stratum and is counted in
  `scans_without_pairs`, so in_view + out_view = overall only over the scans with pairs;
- one (C, C) int64 matrix per scored scan, keyed by the scan key (for a bootstrap over scans;
  a key read twice adds up), so the per-scan matrices sum to the overall one;
- `stats["loss"]`: the held-out loss, the voxel cross-entropy (as in training, ignore-label
  voxels excluded) summed over the split and divided by its `loss_voxels`; NaN if none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hvdistill.eval.metrics import ConfusionMatrix
from hvdistill.eval.segmentation import SegmentationModel
from hvdistill.eval.strata import strata_masks, stratum_names
from hvdistill.eval.voxels import SegBatch

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What one evaluation of a split scored (see the module docstring)."""

    confusion: ConfusionMatrix
    strata: dict[str, ConfusionMatrix]  # stratum name -> matrix, in `stratum_names` order
    per_scan: dict[str, np.ndarray]  # scan key -> (C, C) int64
    stats: dict[str, Any]  # scans, bad_scans, scans_without_pairs, points_*, loss, loss_voxels


def point_predictions(logits: torch.Tensor, batch: SegBatch, ignore_index: int) -> torch.Tensor:
    """(V, C) voxel logits -> (P,) int64 class of every point; `ignore_index` where a point has no voxel."""
    masked = logits.detach().clone()
    masked[:, ignore_index] = float("-inf")  # the ignore class is never predicted
    voxel_pred = masked.argmax(1)  # (V,)
    pred = torch.full_like(batch.point_labels, ignore_index)  # (P,)
    inside = batch.point_to_voxel >= 0
    pred[inside] = voxel_pred[batch.point_to_voxel[inside]]
    return pred


class Scorer:
    """Accumulates an `Evaluation` batch by batch (on the CPU, numpy)."""

    def __init__(self, num_classes: int, ignore_index: int, range_edges: Sequence[float]):
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.range_edges = [float(e) for e in range_edges]
        self.strata = {n: ConfusionMatrix(num_classes, ignore_index) for n in stratum_names(self.range_edges)}
        self.per_scan: dict[str, np.ndarray] = {}
        self.stats: dict[str, Any] = dict.fromkeys(
            (
                "scans",
                "bad_scans",
                "scans_without_pairs",
                "points_total",
                "points_scored",
                "points_outside_range",
            ),
            0,
        )
        self.loss_sum, self.loss_voxels = 0.0, 0

    def add(self, pred: torch.Tensor, batch: SegBatch) -> None:
        """Count (P,) int64 point predictions of `batch` (on any device) overall, per stratum, per scan."""
        c, ignore = self.confusion.num_classes, self.confusion.ignore_index
        pred_np = pred.detach().cpu().numpy().astype(np.int64)  # (P,)
        gt = batch.point_labels.cpu().numpy()  # (P,)
        if pred_np.shape != gt.shape:
            raise ValueError(f"{pred_np.size} predictions for {gt.size} labels")
        labelled = gt != ignore  # (P,) the scored points
        for name, v in (("prediction", pred_np[labelled]), ("label", gt[labelled])):
            if v.size and (int(v.min()) < 0 or int(v.max()) >= c):
                raise ValueError(f"a {name} lies outside [0, {c}): min {int(v.min())}, max {int(v.max())}")
        cells = gt[labelled] * c + pred_np[labelled]  # (L,) flat (ground truth, prediction) index
        scan = batch.point_scan.cpu().numpy()  # (P,)
        per_scan = np.bincount(scan[labelled] * c * c + cells, minlength=batch.batch_size * c * c).astype(
            np.int64
        )
        for key, counts in zip(batch.keys, per_scan.reshape(batch.batch_size, c, c)):  # (C, C) each
            self.per_scan[key] = self.per_scan[key] + counts if key in self.per_scan else counts
        self.confusion.counts += np.bincount(cells, minlength=c * c).reshape(c, c)
        has_view = batch.scan_has_view.cpu().numpy()  # (B,)
        distance, in_view = batch.point_distance.cpu().numpy(), batch.point_in_view.cpu().numpy()  # (P,) each
        for name, mask in strata_masks(distance, in_view, has_view[scan], self.range_edges).items():
            self.strata[name].counts += np.bincount(cells[mask[labelled]], minlength=c * c).reshape(c, c)
        s = self.stats
        s["scans"] += batch.batch_size
        s["bad_scans"] += batch.bad
        s["scans_without_pairs"] += int((~has_view).sum())
        s["points_total"] += len(gt)
        s["points_scored"] += int(labelled.sum())
        s["points_outside_range"] += int((labelled & (batch.point_to_voxel.cpu().numpy() < 0)).sum())

    def add_loss(self, loss_sum: float, voxels: int) -> None:
        """Add a batch's summed voxel cross-entropy over its `voxels` labelled voxels."""
        self.loss_sum, self.loss_voxels = self.loss_sum + float(loss_sum), self.loss_voxels + int(voxels)

    def result(self) -> Evaluation:
        loss = self.loss_sum / self.loss_voxels if self.loss_voxels else math.nan
        stats = {**self.stats, "loss": loss, "loss_voxels": self.loss_voxels}
        return Evaluation(self.confusion, dict(self.strata), dict(self.per_scan), stats)


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    batches: Iterable[SegBatch],
    num_classes: int,
    ignore_index: int,
    device: torch.device | str,
    range_edges: Sequence[float] = (20.0, 40.0),
) -> Evaluation:
    """Score every point of `batches` overall, per stratum and per scan, with the held-out loss.

    The model is put in eval mode and left there; the caller switches back to training.
    """
    model.eval()
    scorer = Scorer(num_classes, ignore_index, range_edges)
    for cpu_batch in batches:
        if cpu_batch.batch_size == 0:  # only bad scans: counted, nothing to predict
            scorer.add(torch.zeros(0, dtype=torch.int64), cpu_batch)
            continue
        batch = cpu_batch.to(device)
        if len(batch.voxel_coords):
            logits = model(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)
        else:  # every point of these scans lies outside the range: nothing to predict
            logits = torch.zeros((0, num_classes), device=device)
        labelled = batch.voxel_labels != ignore_index  # (V,)
        if bool(labelled.any()):
            ce = F.cross_entropy(logits[labelled].float(), batch.voxel_labels[labelled], reduction="sum")
            scorer.add_loss(float(ce), int(labelled.sum()))
        scorer.add(point_predictions(logits, batch, ignore_index), cpu_batch)
    ev = scorer.result()
    if ev.stats["points_outside_range"]:
        log.warning(
            "%d of %d scored points lie outside finetune.point_range and count as misses; widen the range",
            ev.stats["points_outside_range"],
            ev.stats["points_scored"],
        )
    return ev
