"""The learning rate of every optimizer step: the batch-size scaling rule, warm-up and cosine/constant decay.

Scaling rule (METHOD.md section 6: "scale the learning rate with the global batch"): with
`optim.scale_lr` the peak rate is `optim.lr * train.global_batch / optim.reference_batch`, linear in
the global batch, so the published 0.5 at 16 samples (4 GPUs x 4) becomes 1.0 at 32. Without
`scale_lr` the peak is `optim.lr` as given.

Shape over `total` optimizer steps (step = the number of steps already taken, 0-based):
- warm-up (`optim.warmup_steps` > 0): linear from peak / warmup_steps at step 0 to the peak at
  step warmup_steps - 1;
- then `optim.schedule`: `cosine` decays from the peak to 0 over the remaining steps
  (0.5 * (1 + cos(pi * t)), t from 0 to 1), `constant` stays at the peak.
The factor is a pure function of the step, so a resumed run sets the scheduler's step and gets the
identical rate; the scheduler's state dict holds only numbers.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from hvdistill.config import OptimConfig


def peak_lr(optim: OptimConfig, global_batch: int) -> float:
    """The learning rate after warm-up: `optim.lr`, scaled by global_batch / reference_batch if scale_lr."""
    if optim.scale_lr:
        return optim.lr * global_batch / optim.reference_batch
    return optim.lr


def lr_factor(step: int, total: int, optim: OptimConfig) -> float:
    """Multiplier of the peak rate for the optimizer step `step` (0-based) of `total`."""
    warm = optim.warmup_steps
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if optim.schedule == "constant":
        return 1.0
    span = max(total - warm, 1)
    t = min(max(step - warm, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total: int) -> LambdaLR:
    """A LambdaLR whose factor is `lr_factor(step, total, optim)`; the optimizer's lr must be the peak.

    DeepSpeed calls `.step()` after every optimizer step that was applied.
    """

    def factor(step: int) -> float:
        return lr_factor(step, total, optim)

    return LambdaLR(optimizer, factor)
