"""The Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018) with an ignore label.

A differentiable surrogate of 1 - IoU per class: for class c, the errors
m_i = |1[y_i = c] - p_i(c)| of the points are sorted in decreasing order and the loss is the
Lovasz extension of the Jaccard set function, sum_i m_(i) * g_i, where g is the difference of
consecutive Jaccard losses of the growing error sets (`lovasz_grad`, Algorithm 1 of the paper).
The loss averages this over the classes present in the labels (the published default,
`classes="present"`), or over every class (`classes="all"`).

Points whose label is `ignore_index` are removed before anything else, as in the SLidR
fine-tuning code: the probabilities still come from a softmax over every logit, the ignore
class included, but no point asks for it.
"""

from __future__ import annotations

from typing import Literal

import torch


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """(P,) binary ground truth in the order of decreasing errors -> (P,) Lovasz extension weights."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)  # (P,)
    union = gts + (1.0 - gt_sorted).cumsum(0)  # (P,)
    jaccard = 1.0 - intersection / union  # (P,) Jaccard loss of the first i + 1 errors
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(
    probs: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int | None = 0,
    classes: Literal["present", "all"] = "present",
) -> torch.Tensor:
    """Lovasz-softmax of (P, C) class probabilities against (P,) int labels; a scalar.

    Zero (with a gradient path) when no point is left after removing the ignore label, or when
    `classes="present"` finds no class.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"expected (P, C) probabilities and (P,) labels, got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]  # (P', C), (P',)
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)  # (P',)
        if classes == "present" and not bool(fg.any()):
            continue
        errors = (fg - probs[:, c]).abs()  # (P',)
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()
