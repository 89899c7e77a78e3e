"""The class-free teacher's target: depth as log-spaced bins and the surface normal (docs/teacher.md).

With `teacher_train.target=geometry` the head on the backbone has `depth_bins + 3` channels per
pixel: depth-bin logits, trained with cross-entropy against the bin of the rendered depth, and
a normal, L2-normalised and trained with 1 - cosine against the rendered camera-frame normal.
Pixels without a surface (sky; depth maps also hold 0 beyond 65.535 m) are left out of the
term they lack. Bin edges are `depth_bins + 1` log-spaced values from `depth_min` to
`depth_max`; a depth outside falls in the first / last bin, and a bin stands for its geometric
centre. `GeometryScores` accumulates the held-out metrics: depth-bin accuracy, abs-rel depth
error of the predicted bin's centre, mean normal angle error and the fraction of pixels within
11.25 / 22.5 / 30 degrees (the usual surface-normal thresholds).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hvdistill.config.teacher import TeacherTrainConfig

NORMAL_CHANNELS = 3
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees


def head_channels(t: TeacherTrainConfig) -> int:
    """Output channels of the geometry head: depth-bin logits, then the normal."""
    return t.depth_bins + NORMAL_CHANNELS


def bin_edges(t: TeacherTrainConfig) -> torch.Tensor:
    """(depth_bins + 1,) float32 log-spaced edges in metres."""
    return torch.logspace(math.log10(t.depth_min), math.log10(t.depth_max), t.depth_bins + 1)


def bin_centres(t: TeacherTrainConfig) -> torch.Tensor:
    """(depth_bins,) float32 geometric centre of each bin in metres."""
    edges = bin_edges(t)
    return torch.sqrt(edges[:-1] * edges[1:])


def depth_bins_of(depth: torch.Tensor, t: TeacherTrainConfig) -> torch.Tensor:
    """(B, H, W) metres -> (B, H, W) int64 bin index, -1 where there is no depth (0)."""
    inner = bin_edges(t).to(depth.device)[1:-1]  # (depth_bins - 1,)
    idx = torch.bucketize(depth.contiguous(), inner, right=True)  # (B, H, W)
    return torch.where(depth > 0, idx, torch.full_like(idx, -1))


def _split(out: torch.Tensor, targets: torch.Tensor, t: TeacherTrainConfig):
    """Head output (B, bins + 3, H, W) and targets (B, 4, H, W) -> the parts each term uses."""
    logits, normal = (
        out[:, : t.depth_bins],
        F.normalize(out[:, t.depth_bins :], dim=1),
    )  # (B, K, H, W), (B, 3, H, W)
    bins = depth_bins_of(targets[:, 0], t)  # (B, H, W)
    has_normal = (targets[:, 1:] != 0).any(dim=1)  # (B, H, W)
    return logits, normal, bins, has_normal


def geometry_loss(out: torch.Tensor, targets: torch.Tensor, t: TeacherTrainConfig) -> torch.Tensor:
    """Depth-bin cross-entropy + `normal_weight` x mean (1 - cos) over the pixels that have each."""
    logits, normal, bins, has_normal = _split(out, targets, t)
    ce = F.cross_entropy(logits, bins, ignore_index=-1, reduction="sum") / (bins >= 0).sum().clamp(min=1)
    cos = (normal * targets[:, 1:]).sum(dim=1)  # (B, H, W)
    normal_loss = ((1 - cos) * has_normal).sum() / has_normal.sum().clamp(min=1)
    return ce + t.normal_weight * normal_loss


class GeometryScores:
    """Held-out depth and normal metrics, summed over batches (float64 on the host)."""

    def __init__(self, t: TeacherTrainConfig):
        self.t, self.centres = t, bin_centres(t)
        self.depth_px = self.normal_px = 0
        self.correct = self.abs_rel = self.angle = 0.0
        self.within = [0] * len(ANGLE_THRESHOLDS)

    @torch.no_grad()
    def update(self, out: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: head output (B, bins + 3, H, W), targets (B, 4, H, W) on the same device."""
        logits, normal, bins, has_normal = _split(out, targets, self.t)
        pred = logits.argmax(dim=1)  # (B, H, W)
        valid = bins >= 0
        depth = targets[:, 0][valid]  # (P,)
        self.depth_px += int(valid.sum())
        self.correct += float((pred[valid] == bins[valid]).sum())
        centre = self.centres.to(out.device)[pred[valid]]  # (P,)
        self.abs_rel += float(((centre - depth).abs() / depth).double().sum())
        cos = (normal * targets[:, 1:]).sum(dim=1)[has_normal].clamp(-1.0, 1.0)  # (Q,)
        deg = torch.rad2deg(torch.acos(cos))  # (Q,)
        self.normal_px += int(has_normal.sum())
        self.angle += float(deg.double().sum())
        for i, limit in enumerate(ANGLE_THRESHOLDS):
            self.within[i] += int((deg < limit).sum())

    def result(self) -> dict[str, float]:
        """The metrics (nan where no pixel had the quantity)."""
        d, n = self.depth_px or math.nan, self.normal_px or math.nan
        out = {
            "depth_bin_accuracy": self.correct / d,
            "depth_abs_rel": self.abs_rel / d,
            "normal_angle_mean_deg": self.angle / n,
            "depth_pixels": self.depth_px,
            "normal_pixels": self.normal_px,
        }
        for limit, count in zip(ANGLE_THRESHOLDS, self.within, strict=True):
            out[f"normal_within_{limit:g}_deg"] = count / n
        return out
