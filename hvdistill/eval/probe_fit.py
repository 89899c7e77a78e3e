"""The frozen-feature probe's two readouts, fitted on cached (N, D) features and (N,) labels.

Both work on standardised features (`Standardiser`: the training points' per-channel mean and
standard deviation) and only know the classes that occur among the training points: a class
absent from them gets no logit and no prototype, so it is never predicted.
- `fit_logistic`: multinomial logistic regression, W (D, K) and b (K,) over the K training
  classes, minimising the class-balanced cross-entropy (class c weighted N / (K n_c), so every
  class carries the same total weight and the weights average 1 over the points) plus
  l2 / 2 * ||W||^2, full batch with L-BFGS and a strong-Wolfe line search, in float64. It stops
  when the gradient's largest absolute entry is at most `tolerance` (converged), after
  `max_iterations`, or when the line search can no longer change the loss (a stall); the
  gradient is measured again at the end, so `converged` says whether the optimum was reached.
- `fit_prototypes`: per class, the mean of the L2-normalised standardised features, normalised;
  a point takes the class of highest cosine similarity. No optimisation, nothing to converge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

STD_FLOOR = 1e-8  # a channel whose training std is below this (e.g. a dead ReLU) is centred, not scaled
NORM_FLOOR = 1e-12  # F.normalize's guard for an all-zero feature vector
# L-BFGS also stops when a step changes the loss or the parameters by less than this: float64 cannot
# resolve smaller changes of an O(1) loss, so the run has stalled (reported, `converged` stays honest)
STALL_CHANGE = 1e-12
LINE_SEARCH_EVALS = 25  # loss evaluations one strong-Wolfe line search may take (torch's max_ls)


@dataclass
class Standardiser:
    """x -> (x - mean) / std per channel, with the training points' statistics."""

    mean: torch.Tensor  # (D,) float64
    std: torch.Tensor  # (D,) float64, channels below STD_FLOOR set to 1

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardiser:
        """From (N, D) training features (any float dtype)."""
        x = features.double()  # (N, D)
        std = x.std(0, unbiased=False)  # (D,)
        return cls(x.mean(0), torch.where(std > STD_FLOOR, std, torch.ones_like(std)))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (M, D) float64 on the statistics' device."""
        x = features.to(self.mean.device, torch.float64)
        return (x - self.mean) / self.std


def class_weights(labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(K,) float64 weight of each of the (K,) `classes` among the (N,) `labels`: N / (K n_c),
    inversely proportional to the class's frequency, so sum_i w[y_i] = N (the mean weight is 1)."""
    counts = (labels.reshape(-1, 1) == classes.reshape(1, -1)).sum(0).double()  # (K,)
    if bool((counts == 0).any()):
        raise ValueError("class_weights: a class of `classes` has no training point")
    return labels.numel() / (len(classes) * counts)


@dataclass
class LogisticFit:
    """A fitted multinomial logistic regression over the training classes, and how the fit went."""

    classes: torch.Tensor  # (K,) int64 class ids, ascending
    weight: torch.Tensor  # (D, K) float64
    bias: torch.Tensor  # (K,) float64
    iterations: int
    evaluations: int  # loss evaluations (line searches included)
    loss: float  # final objective (weighted cross-entropy + l2 term)
    gradient_max: float  # the final gradient's largest absolute entry
    converged: bool  # gradient_max <= tolerance
    seconds: float

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, D) standardised features -> (M,) int64 class ids."""
        x = features.to(self.weight.device, torch.float64)  # (M, D)
        return self.classes[(x @ self.weight + self.bias).argmax(1)]  # (M,)

    def facts(self) -> dict[str, Any]:
        """The fit's numbers for metrics.json and tracking."""
        return {
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "loss": self.loss,
            "gradient_max": self.gradient_max,
            "converged": self.converged,
            "classes": [int(c) for c in self.classes],
            "seconds": round(self.seconds, 3),
        }


def _objective(
    x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float
) -> torch.Tensor:
    """Class-weighted mean cross-entropy of (N, D) x against (N,) class indices, + l2 / 2 ||W||^2."""
    ce = F.cross_entropy(x @ w + b, target, weight=weights)  # sum_i w[y_i] CE_i / sum_i w[y_i]
    return ce + 0.5 * l2 * w.square().sum()


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    l2: float,
    max_iterations: int,
    tolerance: float,
    history: int,
) -> LogisticFit:
    """Fit W, b on (N, D) standardised features and (N,) class ids (see the module docstring)."""
    started = time.perf_counter()
    x = features.double()  # (N, D)
    classes = torch.unique(labels)  # (K,) sorted
    target = torch.searchsorted(classes, labels.to(classes.device))  # (N,) index into classes
    weights = class_weights(labels, classes).to(x.device)  # (K,)
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,  # the line search's first trial step: the quasi-Newton step itself
        max_iter=max_iterations,
        max_eval=max_iterations * LINE_SEARCH_EVALS,
        tolerance_grad=tolerance,
        tolerance_change=STALL_CHANGE,
        history_size=history,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _objective(x, target, weights, w, b, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[w]
    loss = closure()  # the objective and its gradient where the fit stopped
    gradient_max = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    return LogisticFit(
        classes=classes,
        weight=w.detach(),
        bias=b.detach(),
        iterations=int(state.get("n_iter", 0)),
        evaluations=int(state.get("func_evals", 0)),
        loss=float(loss.detach()),
        gradient_max=gradient_max,
        converged=gradient_max <= tolerance,
        seconds=time.perf_counter() - started,
    )


@dataclass
class Prototypes:
    """One unit vector per training class; a point takes the class of highest cosine similarity."""

    classes: torch.Tensor  # (K,) int64 class ids, ascending
    vectors: torch.Tensor  # (K, D) float64, unit rows

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, D) standardised features -> (M,) int64 class ids."""
        x = F.normalize(features.to(self.vectors.device, torch.float64), dim=1, eps=NORM_FLOOR)  # (M, D)
        return self.classes[(x @ self.vectors.T).argmax(1)]  # (M,)


def fit_prototypes(features: torch.Tensor, labels: torch.Tensor) -> Prototypes:
    """Class prototypes from (N, D) standardised features and (N,) class ids."""
    x = F.normalize(features.double(), dim=1, eps=NORM_FLOOR)  # (N, D)
    classes = torch.unique(labels)  # (K,)
    index = torch.searchsorted(classes, labels.to(classes.device))  # (N,)
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, device=x.device)  # (K, D)
    sums.index_add_(0, index.to(x.device), x)
    return Prototypes(classes, F.normalize(sums, dim=1, eps=NORM_FLOOR))
