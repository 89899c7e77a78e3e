"""Lovasz-softmax against the Lovasz extension of the Jaccard loss evaluated from its definition.

The reference never uses the sorted-cumsum gradient of the implementation: for errors m in
[0, 1]^P and the Jaccard set function Delta(A) = |A| / |G u A| (G = the class's points,
Delta(empty) = 0), the Lovasz extension is the Choquet integral of Delta over the level sets,
f(m) = integral_0^max(m) Delta({i : m_i > t}) dt, integrated exactly between the breakpoints.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvdistill.eval.lovasz import lovasz_softmax


def jaccard_set_loss(selected: np.ndarray, fg: np.ndarray) -> float:
    """Delta(A) = |A| / |G u A| for boolean masks A (mispredicted points) and G (the class)."""
    if not selected.any():
        return 0.0
    return selected.sum() / (fg | selected).sum()


def lovasz_extension(errors: np.ndarray, fg: np.ndarray) -> float:
    """Choquet integral of the Jaccard set function: exact sum over the intervals between breakpoints."""
    levels = np.unique(np.concatenate([[0.0], errors]))
    total = 0.0
    for lo, hi in zip(levels[:-1], levels[1:]):
        total += (hi - lo) * jaccard_set_loss(errors >= hi, fg)  # {m > t} for every t in (lo, hi)
    return total


def reference(probs: np.ndarray, labels: np.ndarray, ignore: int | None, classes: str) -> float:
    if ignore is not None:
        probs, labels = probs[labels != ignore], labels[labels != ignore]
    losses = []
    for c in range(probs.shape[1]):
        fg = labels == c
        if classes == "present" and not fg.any():
            continue
        losses.append(lovasz_extension(np.abs(fg.astype(np.float64) - probs[:, c]), fg))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("seed", range(12))
def test_lovasz_softmax_equals_the_extension_from_its_definition(seed, classes):
    rng = np.random.default_rng(seed)
    points, num_classes = int(rng.integers(1, 12)), int(rng.integers(2, 6))
    logits = rng.normal(scale=2.0, size=(points, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, num_classes, points)
    got = lovasz_softmax(torch.from_numpy(probs), torch.from_numpy(labels), ignore_index=0, classes=classes)
    assert got.item() == pytest.approx(reference(probs, labels, 0, classes), abs=1e-12)


def test_without_ignore_label_and_with_tied_errors():
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 0])
    got = lovasz_softmax(torch.from_numpy(probs), torch.from_numpy(labels), ignore_index=None)
    assert got.item() == pytest.approx(reference(probs, labels, None, "present"), abs=1e-12)


def test_perfect_and_all_wrong_one_hot_predictions():
    labels = torch.tensor([1, 2, 2, 0, 3])
    perfect = torch.nn.functional.one_hot(labels, 4).double()
    assert lovasz_softmax(perfect, labels).item() == 0.0
    wrong = torch.nn.functional.one_hot((labels % 3) + 1, 4).double()  # 1->2, 2->3, 3->1
    assert lovasz_softmax(wrong, labels).item() == pytest.approx(1.0)


def test_only_ignored_points_give_zero_with_a_gradient_path():
    probs = torch.rand(4, 3, requires_grad=True)
    loss = lovasz_softmax(probs, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(probs.grad) == 0


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 2, 3, 1, 0, 2, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda x: lovasz_softmax(x.softmax(1), labels), (logits,))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(P, C\)"):
        lovasz_softmax(torch.rand(3, 2), torch.zeros(4, dtype=torch.long))
