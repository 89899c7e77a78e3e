"""The learning rate of every optimizer step: batch-size scaling, the large-batch rule, warm-up, decay.

Scaling rule (the published recipe scales the learning rate with the global batch; docs/method.md): with
`optim.scale_lr` the peak rate is `optim.lr * train.global_batch / optim.reference_batch`, linear in
the global batch, so the published 0.5 at 16 samples (4 GPUs x 4) becomes 1.0 at 32 and 4.0 at 128.
Without `scale_lr` the peak is `optim.lr` as given.

Large-batch rule (docs/training.md, "Large batches"; Goyal et al. 2017, linear scaling with a
gradual warm-up): when the scaling rule multiplies `optim.lr` by more than
`optim.large_batch_above_scale`, a warm-up left unset (`optim.warmup_steps` and
`optim.warmup_fraction` both 0) becomes `optim.large_batch_warmup_fraction` of the run, and a
`optim.grad_clip` left at 0 becomes `optim.large_batch_grad_clip`. At or below that scale, and
at the published batch 16, nothing changes: no warm-up, no clipping. `resolved_schedule` applies
the rule once at the start of a run (the resolved values are what config.yaml, the DeepSpeed
config and the checkpoints hold) and logs what it chose and why; resolving twice changes nothing.

Shape over `total` optimizer steps (step = the number of steps already taken, 0-based):
- warm-up of `warmup_length` steps (`optim.warmup_steps`, else `optim.warmup_fraction` of `total`):
  linear from peak / length at step 0 to the peak at step length - 1;
- then `optim.schedule`: `cosine` decays from the peak to 0 over the remaining steps
  (0.5 * (1 + cos(pi * t)), t from 0 to 1), `constant` stays at the peak.
The factor is a pure function of the step and `total` (which a resumed run takes from its
checkpoint), so a resumed run sets the scheduler's step and gets the identical rate; the
scheduler's state dict holds only numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
from torch.optim.lr_scheduler import LambdaLR

from hvdistill.config import Config, OptimConfig

log = logging.getLogger(__name__)


def lr_scale(optim: OptimConfig, global_batch: int) -> float:
    """The factor the scaling rule multiplies `optim.lr` by: global_batch / reference_batch, or 1."""
    return global_batch / optim.reference_batch if optim.scale_lr else 1.0


def peak_lr(optim: OptimConfig, global_batch: int) -> float:
    """The learning rate after warm-up: `optim.lr`, scaled by global_batch / reference_batch if scale_lr."""
    return optim.lr * lr_scale(optim, global_batch)


def is_large_batch(optim: OptimConfig, global_batch: int) -> bool:
    """Whether the scaling rule raises the rate by more than `optim.large_batch_above_scale` (0: never)."""
    above = optim.large_batch_above_scale
    return above > 0 and lr_scale(optim, global_batch) > above


@dataclass(frozen=True)
class LargeBatchChoice:
    """What the large-batch rule made of an `optim` section at one global batch, and why."""

    optim: OptimConfig  # the resolved section
    scale: float
    large: bool
    peak: float

    def describe(self, before: OptimConfig, global_batch: int) -> str:
        o = self.optim
        rate = f"lr {self.peak:g} = {o.lr:g} x {self.scale:g} (train.global_batch {global_batch}"
        rate += f" / optim.reference_batch {o.reference_batch})" if o.scale_lr else ", optim.scale_lr off)"
        if not self.large:
            rule = f"scale {self.scale:g} <= optim.large_batch_above_scale {o.large_batch_above_scale:g}"
            if o.large_batch_above_scale <= 0:
                rule = "the large-batch rule is off (optim.large_batch_above_scale 0)"
            return f"optim: {rate}; {rule}: {_warmup_text(o)}, {_clip_text(o)}, as configured"
        warm_by = "set explicitly" if before.warmup_steps or before.warmup_fraction else "large-batch rule"
        clip_by = "set explicitly" if before.grad_clip else "large-batch rule"
        return (
            f"optim: large batch: {rate}, scale {self.scale:g} > optim.large_batch_above_scale "
            f"{o.large_batch_above_scale:g}: {_warmup_text(o)} ({warm_by}), {_clip_text(o)} ({clip_by})"
        )


def _warmup_text(o: OptimConfig) -> str:
    if o.warmup_steps:
        return f"linear warm-up over {o.warmup_steps} steps"
    if o.warmup_fraction:
        return f"linear warm-up over {o.warmup_fraction:.0%} of the optimizer steps"
    return "no warm-up"


def _clip_text(o: OptimConfig) -> str:
    return f"gradient norm clipped at {o.grad_clip:g}" if o.grad_clip else "no gradient clipping"


def choose_large_batch(optim: OptimConfig, global_batch: int) -> LargeBatchChoice:
    """The large-batch rule (module docstring) applied to `optim` at `global_batch`."""
    scale, large = lr_scale(optim, global_batch), is_large_batch(optim, global_batch)
    resolved = optim
    if large:
        unset = not (optim.warmup_steps or optim.warmup_fraction)
        resolved = replace(
            optim,
            warmup_fraction=optim.large_batch_warmup_fraction if unset else optim.warmup_fraction,
            grad_clip=optim.grad_clip or optim.large_batch_grad_clip,
        )
    return LargeBatchChoice(resolved, scale, large, peak_lr(optim, global_batch))


def resolved_schedule(cfg: Config, announce: bool = False) -> Config:
    """`cfg` with the large-batch rule applied to its `optim` section; logs the choice if `announce`
    (rank 0, once at the start of a run). Idempotent: a resolved config resolves to itself."""
    choice = choose_large_batch(cfg.optim, cfg.train.global_batch)
    if announce:
        log.info(choice.describe(cfg.optim, cfg.train.global_batch))
    return replace(cfg, optim=choice.optim)


def warmup_length(optim: OptimConfig, total: int) -> int:
    """Warm-up steps of a run of `total` optimizer steps: `warmup_steps`, else `warmup_fraction` of
    `total` (at least 1 when the fraction is set), else 0."""
    if optim.warmup_steps or not optim.warmup_fraction:
        return optim.warmup_steps
    return max(1, round(optim.warmup_fraction * total))


def lr_factor(step: int, total: int, optim: OptimConfig) -> float:
    """Multiplier of the peak rate for the optimizer step `step` (0-based) of `total`."""
    warm = warmup_length(optim, total)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if optim.schedule == "constant":
        return 1.0
    span = max(total - warm, 1)
    t = min(max(step - warm, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total: int) -> LambdaLR:
    """A LambdaLR whose factor is `lr_factor(step, total, optim)`; the optimizer's lr must be the peak.

    `optim` is the resolved section (`resolved_schedule`). DeepSpeed calls `.step()` after every
    optimizer step that was applied.
    """

    def factor(step: int) -> float:
        return lr_factor(step, total, optim)

    return LambdaLR(optimizer, factor)
