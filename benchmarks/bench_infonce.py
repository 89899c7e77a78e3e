"""Benchmark: tiled InfoNCE (streaming log-sum-exp, hand-written backward) vs full logits.

4,096 anchors against 65,536 keys of 64 dimensions, forward + backward, fp32, on the CPU.
- Time: medians of interleaved repeats (untiled, tiled, untiled, ...) in this process.
- Peak memory: each variant runs once in a fresh subprocess that reads the Linux resident-set
  high-water mark (VmHWM of /proc/self/status, reset through /proc/self/clear_refs just before
  the loss); reported as the peak minus the resident size right before the loss, i.e. what the
  loss itself adds on top of its inputs. Measured the same way for both variants.
- Equality: loss and gradients of the two variants, and each loss against a float64 loss.

    .venv/bin/python -m benchmarks.bench_infonce [--anchors 4096 --keys 65536 --dim 64
        --tile 4096 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.peak_memory import PeakRSS, run_module
from hvdistill.losses.infonce import infonce_sum

TEMPERATURE = 0.07


def make_inputs(n: int, m: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-length anchors (n, dim), keys (m, dim); anchor i's positive is key i."""
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(m, dim, generator=g), dim=1)
    anchors = F.normalize(keys[:n] + 0.5 * torch.randn(n, dim, generator=g), dim=1)
    return anchors, keys, torch.arange(n)


def leaves(anchors, keys) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh leaf copies that collect gradients."""
    return anchors.clone().requires_grad_(), keys.clone().requires_grad_()


def run_once(q, k, positives, tile: int):
    """Forward + backward on leaves q, k; returns (loss, grad q, grad k, seconds)."""
    start = time.perf_counter()
    loss = infonce_sum(q, k, positives, TEMPERATURE, tile, None, q.shape[0])
    loss.backward()
    return loss.detach(), q.grad, k.grad, time.perf_counter() - start


def float64_loss(anchors, keys, positives, rows: int = 256) -> float:
    """The loss in float64, a block of rows at a time."""
    total = 0.0
    kd = keys.double()
    for s in range(0, anchors.shape[0], rows):
        logits = anchors[s : s + rows].double() @ kd.t() / TEMPERATURE
        pos = logits[torch.arange(logits.shape[0]), positives[s : s + rows]]
        total += float((torch.logsumexp(logits, dim=1) - pos).sum())
    return total / anchors.shape[0]


def measure_memory(args) -> None:
    """Child mode: peak resident memory added by one forward + backward, printed as JSON."""
    anchors, keys, positives = make_inputs(args.anchors, args.keys, args.dim)
    run_once(*leaves(anchors[:8], keys[:64]), positives[:8], args.tile)  # load kernels, pools
    q, k = leaves(anchors, keys)
    with PeakRSS() as mem:
        run_once(q, k, positives, args.tile)
    print(json.dumps({"tile": args.tile, "peak_added_mb": mem.added_mb}))


def memory_of(args, tile: int) -> float:
    child_args = [
        "--child-memory",
        "--tile",
        str(tile),
        "--anchors",
        str(args.anchors),
        "--keys",
        str(args.keys),
        "--dim",
        str(args.dim),
    ]
    out = run_module("benchmarks.bench_infonce", child_args).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_added_mb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=4096)
    parser.add_argument("--keys", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tile", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        measure_memory(args)
        return 0

    mem_full, mem_tiled = memory_of(args, 0), memory_of(args, args.tile)
    anchors, keys, positives = make_inputs(args.anchors, args.keys, args.dim)
    times: dict[int, list[float]] = {0: [], args.tile: []}
    results = {}
    for _ in range(args.repeats):
        for tile in (0, args.tile):
            loss, gq, gk, seconds = run_once(*leaves(anchors, keys), positives, tile)
            times[tile].append(seconds)
            results[tile] = (loss, gq, gk)
            del loss, gq, gk
    (lf, gqf, gkf), (lt, gqt, gkt) = results[0], results[args.tile]
    exact = float64_loss(anchors, keys, positives)
    t_full, t_tiled = statistics.median(times[0]), statistics.median(times[args.tile])
    print(
        f"InfoNCE {args.anchors} anchors x {args.keys} keys x {args.dim} d, fwd+bwd, "
        f"tile {args.tile}, torch threads {torch.get_num_threads()}, {args.repeats} repeats"
    )
    print(f"full logits : {t_full:6.2f} s (median)  peak +{mem_full:8.1f} MB")
    print(f"tiled       : {t_tiled:6.2f} s (median)  peak +{mem_tiled:8.1f} MB")
    print(
        f"ratios      : time tiled/full {t_tiled / t_full:.2f}  memory tiled/full "
        f"{mem_tiled / mem_full:.4f} (1/{mem_full / mem_tiled:.1f})"
    )
    print(
        f"equality    : |loss diff| {abs(float(lf) - float(lt)):.2e}  max |grad anchors diff| "
        f"{(gqf - gqt).abs().max():.2e}  max |grad keys diff| {(gkf - gkt).abs().max():.2e}"
    )
    print(f"vs float64  : full {abs(float(lf) - exact):.2e}  tiled {abs(float(lt) - exact):.2e}")
    print(
        f"all times   : full {[round(t, 2) for t in times[0]]}  "
        f"tiled {[round(t, 2) for t in times[args.tile]]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
