"""The learning rate: the batch-size scaling rule, warm-up, cosine and constant."""

from __future__ import annotations

import math

import torch

from hvdistill.config import OptimConfig
from hvdistill.train.schedule import build_scheduler, lr_factor, peak_lr


def test_peak_lr_scales_with_the_global_batch():
    assert peak_lr(OptimConfig(), 16) == 0.5  # the published 0.5 at 4 GPUs x 4
    assert peak_lr(OptimConfig(), 32) == 1.0
    assert peak_lr(OptimConfig(scale_lr=False), 32) == 0.5


def test_warmup_then_cosine_to_zero_and_constant():
    o = OptimConfig(warmup_steps=4)
    assert [lr_factor(s, 20, o) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, o) == 1.0 and math.isclose(lr_factor(12, 20, o), 0.5)
    assert lr_factor(19, 20, o) > 0 and lr_factor(20, 20, o) == 0.0
    assert lr_factor(15, 20, OptimConfig(schedule="constant")) == 1.0


def test_scheduler_state_holds_only_numbers_and_resumes_the_same_rate(tmp_path):
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=0.5)
    sched = build_scheduler(opt, OptimConfig(), total=10)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    other_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    other = build_scheduler(other_opt, OptimConfig(), total=10)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert math.isclose(other.get_last_lr()[0], opt.param_groups[0]["lr"])
    assert math.isclose(opt.param_groups[0]["lr"], 0.5 * lr_factor(3, 10, OptimConfig()))
