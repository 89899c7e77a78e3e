"""The large-batch rule in a run: resolved once at the start, logged on rank 0, recorded in config.yaml and
deepspeed.json, applied to the rate; and 8x the demo's batch at the scaled rate holding with it (slow)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import yaml

from benchmarks.bench_large_batch import WINDOW, summary, train_curve
from hvdistill.train.run import run
from tests.train.helpers import tiny_train_config


def test_a_scaled_up_run_records_logs_and_applies_the_rule(train_shards, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hvdistill.train.schedule")
    cfg = tiny_train_config(
        train_shards,
        f"train.output_dir={tmp_path}",
        "train.run_name=large",
        "train.global_batch=2",
        "train.micro_batch=2",
        "train.max_steps=4",
        "train.log_every=1",
        "train.eval_every=100",
        "optim.reference_batch=1",  # scale 2: lr 0.5 -> 1.0
        "optim.large_batch_above_scale=1.5",
        "optim.large_batch_warmup_fraction=0.5",  # 2 of the 4 steps
    )
    result = run(cfg)
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())["optim"]
    assert recorded["warmup_fraction"] == 0.5 and recorded["grad_clip"] == cfg.optim.large_batch_grad_clip > 0
    assert cfg.optim.warmup_fraction == 0 and cfg.optim.grad_clip == 0  # the caller's config untouched
    ds = json.loads((result.run_dir / "deepspeed.json").read_text())
    assert ds["gradient_clipping"] == cfg.optim.large_batch_grad_clip
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in lines][:2] == pytest.approx([0.5, 1.0])  # peak 1.0 after 2 warm-up steps
    chosen = [r.getMessage() for r in caplog.records if "large batch" in r.getMessage()]
    assert len(chosen) == 1 and "scale 2 > optim.large_batch_above_scale 1.5" in chosen[0]


@pytest.mark.slow
def test_eight_times_the_demo_batch_at_the_scaled_rate_holds(train_shards, tmp_path):
    """benchmarks/bench_large_batch.py's x8 arm: global 16 at lr 0.5 (8 x the demo's 0.0625), the
    defaults' warm-up and clipping; 30 steps, ~3 min on 2 shared cores."""
    curve = train_curve(train_shards, tmp_path, "x8", steps=30)
    s = summary(curve)
    assert s["finite"], f"non-finite loss at step {curve['nonfinite_at']}"
    assert len(curve["metrics"]) == 30 and all(math.isfinite(m["loss/total"]) for m in curve["metrics"])
    assert s["last"] < s["first"], f"last {WINDOW} steps {s['last']:.2f} >= first {WINDOW} {s['first']:.2f}"
