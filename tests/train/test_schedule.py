"""The learning rate: the batch-size scaling rule, the large-batch rule, warm-up, cosine and constant."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch

from hvdistill.config import Config, OptimConfig, TrainConfig
from hvdistill.train.schedule import (
    build_scheduler,
    choose_large_batch,
    lr_factor,
    peak_lr,
    resolved_schedule,
    warmup_length,
)


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


# the large-batch rule (docs/training.md, "Large batches")
PAPER = OptimConfig()  # lr 0.5 at reference batch 16, the rule's defaults


def test_the_published_batch_keeps_the_published_schedule():
    for batch in (16, 32):  # scale 1 and 2: not above optim.large_batch_above_scale (2)
        choice = choose_large_batch(PAPER, batch)
        assert not choice.large and choice.optim == PAPER
        assert warmup_length(choice.optim, 10_950) == 0 and choice.optim.grad_clip == 0
    assert lr_factor(0, 100, choose_large_batch(PAPER, 16).optim) == 1.0  # the full rate at step 0


def test_scaled_up_batches_get_the_warmup_and_the_clip():
    choice = choose_large_batch(PAPER, 128)  # 32 GPUs x 4: lr 0.5 -> 4.0
    assert choice.large and choice.scale == 8 and choice.peak == 4.0
    assert choice.optim.warmup_fraction == PAPER.large_batch_warmup_fraction > 0
    assert choice.optim.grad_clip == PAPER.large_batch_grad_clip > 0
    assert choose_large_batch(PAPER, 48).large  # scale 3 > 2


def test_explicit_values_win_and_the_rule_can_be_switched_off():
    steps = choose_large_batch(replace(PAPER, warmup_steps=500, grad_clip=3.0), 128).optim
    assert (steps.warmup_steps, steps.warmup_fraction, steps.grad_clip) == (500, 0.0, 3.0)
    share = choose_large_batch(replace(PAPER, warmup_fraction=0.02), 128).optim
    assert share.warmup_fraction == 0.02 and share.grad_clip == PAPER.large_batch_grad_clip
    for off in (replace(PAPER, large_batch_above_scale=0), replace(PAPER, scale_lr=False)):
        assert choose_large_batch(off, 128).optim == off
    no_clip = choose_large_batch(replace(PAPER, large_batch_grad_clip=0), 128).optim
    assert no_clip.grad_clip == 0 and no_clip.warmup_fraction > 0


def test_resolving_twice_changes_nothing():
    cfg = Config(optim=PAPER, train=TrainConfig(global_batch=128))
    once = resolved_schedule(cfg)
    assert once.optim != cfg.optim and resolved_schedule(once) == once
    assert once.train == cfg.train and cfg.optim == PAPER  # a copy; the input is untouched


def test_the_warmup_share_becomes_steps_of_the_run():
    share = replace(PAPER, warmup_fraction=0.1)
    assert warmup_length(share, 10_950) == 1095  # 5 of 50 epochs of nuScenes (219 steps each at 128)
    assert warmup_length(share, 30) == 3 and warmup_length(share, 4) == 1  # never 0 once set
    assert warmup_length(replace(PAPER, warmup_steps=7), 30) == 7
    factors = [lr_factor(s, 30, share) for s in range(30)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0] and factors[3] == 1.0
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))  # cosine after it


def test_a_run_resumed_inside_the_warmup_gets_the_same_rate():
    optim = choose_large_batch(PAPER, 128).optim
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=4.0)
    sched = build_scheduler(opt, optim, total=100)
    for _ in range(4):
        opt.step()
        sched.step()
    other_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=4.0)
    other = build_scheduler(other_opt, optim, total=100)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == sched.get_last_lr() == [4.0 * 5 / 10]  # step 4 of a 10-step warm-up


def test_the_choice_is_logged_with_its_reason(caplog):
    caplog.set_level(logging.INFO, logger="hvdistill.train.schedule")
    resolved_schedule(Config(optim=PAPER, train=TrainConfig(global_batch=16)))
    assert not caplog.records  # only when asked (rank 0, once at the start)
    resolved_schedule(Config(optim=PAPER, train=TrainConfig(global_batch=128)), announce=True)
    resolved_schedule(Config(optim=PAPER, train=TrainConfig(global_batch=16)), announce=True)
    large, published = (r.getMessage() for r in caplog.records)
    assert "large batch: lr 4 = 0.5 x 8" in large and "scale 8 > optim.large_batch_above_scale 2" in large
    assert "warm-up over 10% of the optimizer steps (large-batch rule)" in large
    assert "clipped at 5 (large-batch rule)" in large
    assert "scale 1 <= optim.large_batch_above_scale 2: no warm-up, no gradient clipping" in published
