"""Per-point evaluation of a segmentation model over a whole split: every point of every scan counted.

The model predicts per voxel (argmax over the classes, the ignore class excluded); each point
takes its voxel's prediction through the voxel inverse index. A point outside
`finetune.point_range` has no voxel and therefore no prediction: it is counted as predicted
"ignore", i.e. as a miss (false negative) of its true class, never dropped, so a range that
does not cover the data lowers the score visibly and `points_outside_range` says by how much.
Points labelled ignore (0) are not scored, as in every benchmark. A scan that cannot be read is
counted in `bad_scans` (its points cannot be scored: a corrupt scan has no trustworthy labels).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from hvdistill.eval.metrics import ConfusionMatrix
from hvdistill.eval.segmentation import SegmentationModel
from hvdistill.eval.voxels import SegBatch

log = logging.getLogger(__name__)


def point_predictions(logits: torch.Tensor, batch: SegBatch, ignore_index: int) -> torch.Tensor:
    """(V, C) voxel logits -> (P,) int64 class of every point; `ignore_index` where a point has no voxel."""
    masked = logits.detach().clone()
    masked[:, ignore_index] = float("-inf")  # the ignore class is never predicted
    voxel_pred = masked.argmax(1)  # (V,)
    pred = torch.full_like(batch.point_labels, ignore_index)  # (P,)
    inside = batch.point_to_voxel >= 0
    pred[inside] = voxel_pred[batch.point_to_voxel[inside]]
    return pred


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    batches: Iterable[SegBatch],
    num_classes: int,
    ignore_index: int,
    device: torch.device | str,
) -> tuple[ConfusionMatrix, dict[str, Any]]:
    """The confusion matrix over every point of `batches`, and counts of what was scored.

    The model is put in eval mode and left there; the caller switches back to training.
    """
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    stats = {"scans": 0, "bad_scans": 0, "points_total": 0, "points_scored": 0, "points_outside_range": 0}
    for cpu_batch in batches:
        stats["bad_scans"] += cpu_batch.bad
        if cpu_batch.batch_size == 0:
            continue
        batch = cpu_batch.to(device)
        if len(batch.voxel_coords):
            logits = model(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)
        else:  # every point of these scans lies outside the range: nothing to predict
            logits = torch.zeros((0, num_classes), device=device)
        pred = point_predictions(logits, batch, ignore_index)  # (P,)
        cm.update(pred, batch.point_labels)
        labelled = batch.point_labels != ignore_index
        stats["scans"] += batch.batch_size
        stats["points_total"] += int(batch.point_labels.numel())
        stats["points_scored"] += int(labelled.sum())
        stats["points_outside_range"] += int((labelled & (batch.point_to_voxel < 0)).sum())
    if stats["points_outside_range"]:
        log.warning(
            "%d of %d scored points lie outside finetune.point_range and count as misses; widen the range",
            stats["points_outside_range"],
            stats["points_scored"],
        )
    return cm, stats
