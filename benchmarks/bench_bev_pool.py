"""Benchmark: sparse-matrix BEV pooling vs the LSS cumsum trick, index preparation included.

The paper's size: 6 cameras x 118 depth bins x 56 x 104 feature cells (4.12M frustum points),
64 context channels, one 256 x 256 grid of 0.4 m, forward + backward, fp32, on the CPU.
Every repeat draws a fresh random LiDAR augmentation and random crops/flips, and both sides
pay for their per-step index preparation:
- sparse (ours): `ray_cells` + `prepare_pool_index` + `bev_pool` (hand-written backward);
- LSS: `hvdistill.geometry.frustum.frustum_cells` (float64) + materialise the lifted
  (points x channels) tensor + sort by cell + QuickCumsum (LSS's cumsum trick and backward).
- Time: medians of interleaved repeats (lss, sparse, lss, ...) in this process.
- Peak memory: each side runs once in a fresh subprocess that reads the Linux resident-set
  high-water mark (VmHWM of /proc/self/status, reset through /proc/self/clear_refs just before
  the step); reported as the peak minus the resident size right before the step (inputs
  excluded), measured the same way for both sides.
- Equality: max |difference| of the pooled table and of the depth and context gradients.

    .venv/bin/python -m benchmarks.bench_bev_pool [--repeats 5 --cameras 6 --channels 64]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from benchmarks.peak_memory import PeakRSS, run_module
from hvdistill.config import GeometryConfig
from hvdistill.geometry.augmentation import image_augmentation_matrix, lidar_augmentation_matrix
from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.frustum import frustum_cells, make_frustum
from hvdistill.geometry.transforms import yaw_rotation
from hvdistill.models.depth.bev_pool import bev_pool, prepare_pool_index, ray_cells

CAM_TO_LIDAR_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
STORED = (800, 450)  # stored image size the crops are taken from
FOCAL = 633.0


def random_geometry(cameras: int, crop: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """intrinsics, camera_to_lidar, image_aug, lidar_aug (per image) of one augmented sample."""
    rng = np.random.default_rng(seed)
    crop_h, crop_w = crop
    k = np.array([[FOCAL, 0.0, STORED[0] / 2], [0.0, FOCAL, STORED[1] / 2], [0.0, 0.0, 1.0]])
    lidar = lidar_augmentation_matrix(
        rng.uniform(-math.pi / 8, math.pi / 8),
        rng.uniform(0.9, 1.1),
        tuple(rng.normal(0.0, 0.5, 3)),
        rng.random() < 0.5,
        rng.random() < 0.5,
    )
    mats: list[list[np.ndarray]] = [[], [], [], []]
    for cam in range(cameras):
        yaw = 2 * math.pi * cam / cameras
        c2l = np.eye(4)
        c2l[:3, :3] = yaw_rotation(yaw) @ CAM_TO_LIDAR_AXES
        c2l[:3, 3] = [math.cos(yaw), math.sin(yaw), -0.3]
        w = rng.uniform(0.55, 1.0) * min(STORED[0], STORED[1] * crop_w / crop_h)
        h = w * crop_h / crop_w
        box = (rng.uniform(0, STORED[0] - w), rng.uniform(0, STORED[1] - h), w, h)
        aug = image_augmentation_matrix(box, (crop_w, crop_h), flip=bool(rng.random() < 0.5))
        for i, m in enumerate((k, c2l, aug, lidar)):
            mats[i].append(m)
    return [torch.from_numpy(np.stack(m)) for m in mats]


class QuickCumsum(torch.autograd.Function):
    """LSS's cumsum trick (lift-splat-shoot, tools.py) with its hand-written backward."""

    @staticmethod
    def forward(ctx, x, ranks):
        x = x.cumsum(0)
        kept = torch.ones(x.shape[0], dtype=torch.bool)
        kept[:-1] = ranks[1:] != ranks[:-1]
        x = x[kept]
        x = torch.cat((x[:1], x[1:] - x[:-1]))
        ctx.save_for_backward(kept)
        return x, kept

    @staticmethod
    def backward(ctx, grad_x, grad_kept):
        (kept,) = ctx.saved_tensors
        back = torch.cumsum(kept, 0)
        back[kept] -= 1
        return grad_x[back], None


def lss_step(depth, context, geometry, frustum, grid, z_range):
    """LSS voxel pooling: materialise, sort by cell, cumsum trick; returns the (cells, C) table."""
    cells = frustum_cells(frustum, grid, *geometry, z_range).reshape(-1)  # (E,) int64
    c = context.shape[1]
    lifted = (depth.unsqueeze(2) * context.unsqueeze(1)).permute(0, 1, 3, 4, 2).reshape(-1, c)  # (E, C)
    keep = cells >= 0
    x, ranks = lifted[keep], cells[keep]
    order = ranks.argsort()
    x, ranks = x[order], ranks[order]
    x, kept = QuickCumsum.apply(x, ranks)
    out = torch.zeros(grid.num_cells, c)
    return out.index_put((ranks[kept],), x)


def sparse_step(depth, context, geometry, frustum, grid, z_range):
    cells = ray_cells(frustum, grid, *geometry, z_range)  # (N, D, Hf, Wf) int32
    return bev_pool(depth, context, prepare_pool_index(cells, grid.num_cells))


STEPS = {"lss": lss_step, "sparse": sparse_step}


def make_inputs(cameras: int, channels: int, g: GeometryConfig):
    hf, wf = g.crop_height // g.feature_stride, g.crop_width // g.feature_stride
    gen = torch.Generator().manual_seed(0)
    depth = torch.randn(cameras, g.depth_bins, hf, wf, generator=gen).softmax(dim=1)
    context = torch.randn(cameras, channels, hf, wf, generator=gen)
    grad_out = torch.randn(g.bev_size**2, channels, generator=gen)
    frustum = make_frustum(
        g.crop_height, g.crop_width, g.feature_stride, g.depth_min, g.depth_max, g.depth_step
    )
    return depth, context, grad_out, frustum


def run_once(side: str, inputs, geometry, grid, z_range):
    """Index preparation + forward + backward; returns (table, grad depth, grad context, s)."""
    depth, context, grad_out, frustum = inputs
    d, c = depth.clone().requires_grad_(), context.clone().requires_grad_()
    start = time.perf_counter()
    out = STEPS[side](d, c, geometry, frustum, grid, z_range)
    out.backward(grad_out)
    return out.detach(), d.grad, c.grad, time.perf_counter() - start


def measure_memory(args, g: GeometryConfig, grid: BEVGrid, z_range) -> None:
    """Child mode: peak resident memory added by one step of `args.side`, printed as JSON."""
    inputs = make_inputs(args.cameras, args.channels, g)
    geometry = random_geometry(args.cameras, (g.crop_height, g.crop_width), 0)
    with PeakRSS() as mem:
        run_once(args.side, inputs, geometry, grid, z_range)
    print(json.dumps({"side": args.side, "peak_added_mb": mem.added_mb}))


def memory_of(args, side: str) -> float:
    child_args = [
        "--child-memory",
        "--side",
        side,
        "--cameras",
        str(args.cameras),
        "--channels",
        str(args.channels),
    ]
    out = run_module("benchmarks.bench_bev_pool", child_args).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_added_mb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", choices=sorted(STEPS), default="sparse", help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    g = GeometryConfig()
    grid = BEVGrid.from_config(g)
    z_range = (g.point_range[2], g.point_range[5])
    if args.child_memory:
        measure_memory(args, g, grid, z_range)
        return 0

    mem = {side: memory_of(args, side) for side in STEPS}
    inputs = make_inputs(args.cameras, args.channels, g)
    times: dict[str, list[float]] = {side: [] for side in STEPS}
    diffs = {"table": 0.0, "grad depth": 0.0, "grad context": 0.0}
    for rep in range(args.repeats):
        geometry = random_geometry(args.cameras, (g.crop_height, g.crop_width), rep + 1)
        results = {}
        for side in STEPS:
            *results[side], seconds = run_once(side, inputs, geometry, grid, z_range)
            times[side].append(seconds)
        for name, a, b in zip(diffs, results["lss"], results["sparse"]):
            diffs[name] = max(diffs[name], float((a - b).abs().max()))
        del results
    t = {side: statistics.median(v) for side, v in times.items()}
    points = args.cameras * g.depth_bins * (g.crop_height // 4) * (g.crop_width // 4)
    print(
        f"BEV pooling {args.cameras} cameras x {g.depth_bins} bins x {g.crop_height // 4} x "
        f"{g.crop_width // 4} = {points / 1e6:.2f}M points, {args.channels} ch, {g.bev_size}^2 grid, "
        f"index prep + fwd + bwd, torch threads {torch.get_num_threads()}, {args.repeats} repeats"
    )
    print(f"LSS cumsum : {t['lss']:6.3f} s (median)  peak +{mem['lss']:8.1f} MB")
    print(f"sparse     : {t['sparse']:6.3f} s (median)  peak +{mem['sparse']:8.1f} MB")
    print(
        f"ratios     : sparse is {t['lss'] / t['sparse']:.1f}x faster, "
        f"memory 1/{mem['lss'] / mem['sparse']:.1f}"
    )
    print("max |diff| : " + "  ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    print(
        f"all times  : lss {[round(x, 2) for x in times['lss']]}  "
        f"sparse {[round(x, 3) for x in times['sparse']]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
