"""Benchmark: 8x the demo's global batch at the linearly scaled rate, with and without the large-batch rule.

The demo (configs/demo.yaml) trains at global batch 2, i.e. at the rate 0.5 x 2 / 16 = 0.0625 of the
scaling rule. Here that is the reference (`optim.lr=0.0625`, `optim.reference_batch=2`) and an arm
`x<k>` trains at k times the demo's batch: 2k = micro-batch 2 x k accumulation steps on one rank
(a micro-batch of 2 holds the same contrastive negatives as the demo's 2 ranks x 1), so the scaling
rule raises the rate k-fold; `x8` is 16 samples at 0.5, the same factor as the paper's 16 -> 128
(lr 0.5 -> 4.0) on 32 GPUs. Each arm is a fresh `run(cfg)` in this process from the same seed and data:
- `x8`: the defaults; scale 8 > `optim.large_batch_above_scale` 2, so the large-batch rule warms up
  linearly over 10% of the steps and clips the gradient norm at 5 (docs/training.md, "Large batches");
- `x8-no-rule`: `optim.large_batch_above_scale=0`: the plain scaled rate from step 0, no clipping;
- `x1` (`--baseline`): the demo's batch 2 at 0.0625 for 8x the steps (the same samples);
- any `x<k>` or `x<k>-no-rule` by `--arms` (e.g. x2-no-rule,x4-no-rule: where the plain rule breaks).
Model and data: configs/tiny.yaml on the tests' synthetic world (6 train samples, two cameras,
32 x 64 crops, resampled), cosine over `--steps` optimizer steps, fp32 image side, one torch
thread. Printed per arm: the loss (`loss/total` of each optimizer step, the mean over its
micro-batches), the gradient norm before clipping and the rate at chosen steps, the first and
last 5-step mean loss, and where it stopped if the loss became non-finite (the run's
NonFiniteLossError, which under Ray Train would be retried `dist.max_failures` times).

    .venv/bin/python -m benchmarks.bench_large_batch [--steps 30] [--seed 0] [--baseline]
        [--arms x8,x8-no-rule] [--json curves.json] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import tempfile
import time
from pathlib import Path

DEMO_RATE = ["optim.lr=0.0625", "optim.reference_batch=2"]  # the demo's rate at its global batch 2
MICRO = 2  # samples per micro-batch: the demo's global micro-batch (2 ranks x 1)
ARM = re.compile(r"x(\d+)(-no-rule)?")
WINDOW = 5  # steps averaged at the start and the end of a curve


def arm_scale(arm: str) -> tuple[int, bool]:
    """(k, whether the large-batch rule is on) of an arm named `x<k>` or `x<k>-no-rule`."""
    match = ARM.fullmatch(arm)
    if not match or int(match[1]) < 1:
        raise SystemExit(f"arm {arm!r}: expected x<k> or x<k>-no-rule with k >= 1, e.g. x8 or x8-no-rule")
    return int(match[1]), not match[2]


def arm_overrides(arm: str) -> list[str]:
    """`x<k>`: k x the demo's batch (micro-batch 2 x k accumulated); `-no-rule`: the rule off."""
    k, rule = arm_scale(arm)
    out = [f"train.global_batch={MICRO * k}", f"train.micro_batch={MICRO}"]
    return out if rule else [*out, "optim.large_batch_above_scale=0"]


def make_shards(workdir: Path) -> Path:
    """The tests' synthetic nuScenes world (6 train, 3 val samples) sharded without Ray."""
    from tests.helpers.world import write_nuscenes_world
    from tests.train.helpers import shard_world

    return shard_world(write_nuscenes_world(workdir / "world"), workdir / "shards")


def arm_config(shards: Path, out: Path, arm: str, steps: int, seed: int, extra: tuple[str, ...] = ()):
    """The tiny config of one arm (`arm_overrides`), `steps` optimizer steps, each logged, then `extra`."""
    from tests.train.helpers import tiny_train_config

    return tiny_train_config(
        shards,
        *DEMO_RATE,
        *arm_overrides(arm),
        f"train.output_dir={out}",
        f"train.run_name={arm}-seed{seed}",
        "train.resume=never",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
        "data.epoch_samples=100000",
        "precision.image_dtype=float32",
        *extra,
    )


def train_curve(
    shards: Path, out: Path, arm: str, steps: int, seed: int = 0, extra: tuple[str, ...] = ()
) -> dict:
    """Run one arm; its per-step metrics, the step its loss became non-finite (or None), wall time."""
    from hvdistill.train.loop import NonFiniteLossError
    from hvdistill.train.run import run

    cfg = arm_config(shards, out, arm, steps, seed, extra)
    stopped, start = None, time.perf_counter()
    try:
        run(cfg)
    except NonFiniteLossError as e:
        stopped = e.step
    lines = (out / cfg.train.run_name / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines]
    return {"arm": arm, "metrics": metrics, "nonfinite_at": stopped, "wall_s": time.perf_counter() - start}


def summary(curve: dict) -> dict:
    """First and last WINDOW-step mean loss, the largest loss and gradient norm, finiteness."""
    loss = [m["loss/total"] for m in curve["metrics"]]
    norm = [m["grad_norm"] for m in curve["metrics"]]
    return {
        "first": sum(loss[:WINDOW]) / len(loss[:WINDOW]),
        "last": sum(loss[-WINDOW:]) / len(loss[-WINDOW:]),
        "max_loss": max(loss),
        "max_grad_norm": max(norm),
        "finite": curve["nonfinite_at"] is None and all(math.isfinite(x) for x in loss),
    }


def print_curve(curve: dict, every: int) -> None:
    s = summary(curve)
    stop = f", non-finite at step {curve['nonfinite_at']}" if curve["nonfinite_at"] is not None else ""
    print(
        f"\n{curve['arm']}: {len(curve['metrics'])} steps in {curve['wall_s']:.0f} s; loss first {WINDOW} "
        f"{s['first']:.2f}, last {WINDOW} {s['last']:.2f}, max {s['max_loss']:.2f}; max grad norm "
        f"{s['max_grad_norm']:.1f}{stop}"
    )
    print("| step | lr | loss/total | ipv | depth | bev | grad norm |\n|---|---|---|---|---|---|---|")
    for m in curve["metrics"]:
        if m["step"] == 1 or m["step"] % every == 0 or m is curve["metrics"][-1]:
            print(
                f"| {m['step']} | {m['lr']:.3f} | {m['loss/total']:.2f} | {m['loss/ipv']:.2f} | "
                f"{m['loss/depth']:.3f} | {m['loss/bev']:.2f} | {m['grad_norm']:.1f} |"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="steps of x8; x<k> runs 8 / k times as many")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="x8,x8-no-rule", help="comma-separated x<k> / x<k>-no-rule")
    p.add_argument("--baseline", action="store_true", help="add x1, the demo (8x the steps at batch 2)")
    p.add_argument("--every", type=int, default=5, help="print every n-th step")
    p.add_argument("--json", type=Path, help="write the curves here")
    p.add_argument(
        "overrides", nargs="*", help="key.sub=value for every arm, e.g. optim.large_batch_grad_clip=5"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hvdistill.train.schedule").setLevel(logging.INFO)  # what the rule chose
    arms = args.arms.split(",") + (["x1"] if args.baseline else [])
    scales = [arm_scale(arm)[0] for arm in arms]  # a misspelt arm stops here, before any work
    curves = []
    with tempfile.TemporaryDirectory(prefix="bench-large-batch-") as tmp:
        shards = make_shards(Path(tmp))
        for arm, k in zip(arms, scales, strict=True):
            stretch = 8 / k  # every arm sees as many samples as x8
            steps = round(args.steps * stretch)
            curves.append(
                train_curve(shards, Path(tmp) / "runs", arm, steps, args.seed, tuple(args.overrides))
            )
            print_curve(curves[-1], max(1, round(args.every * stretch)))
    if args.json:
        args.json.write_text(json.dumps(curves, indent=1))


if __name__ == "__main__":
    main()
