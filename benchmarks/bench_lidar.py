"""Benchmark of the 3D student: forward + backward time and peak memory on one LiDAR sweep.

Variants: the tiny config (configs/tiny.yaml) and the paper config (configs/paper.yaml:
planes 32..96, blocks 2, 3, 4, 6), each with the "strided" and the "column" BEV head, on CPU
with spconv's Native algorithm, in training mode (batch-norm statistics from the batch).

The sweep is synthetic but sensor-shaped: SynthConfig's ring geometry (32 beams x 1084
azimuths, -30..+10 deg, 70 m range, 5% dropout) cast against a ground plane and a street of
vertical facades and parked-car-sized boxes; 31.2k returns, 22.1k voxels after 0.1 m voxelisation
in +-51.2 m. Times are medians of interleaved repeats, with ratios against the tiny/strided
anchor. Memory: (a) peak of live tensor bytes allocated through torch's CPU allocator during
one forward + backward (torch.profiler, profile_memory=True; spconv's own index buffers
allocated outside torch are not seen), (b) peak RSS growth of a fresh child process running one
forward + backward (VmHWM after minus VmRSS before: counts everything, including spconv's
buffers and freed-but-cached allocator memory).

Run: .venv/bin/python -m benchmarks.bench_lidar [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.peak_memory import ROOT, run_module
from hvdistill.config import Config, SynthConfig, load_config
from hvdistill.geometry.voxel import voxelize
from hvdistill.models.lidar import LidarStudent, build_lidar_model

CONFIGS = {"tiny": "configs/tiny.yaml", "paper": "configs/paper.yaml"}
HEADS = ("strided", "column")
SENSOR_HEIGHT = 1.8  # m above the ground plane (benchmark scene)
FACADE_RANGE = (5.0, 20.0)  # m, lateral distance of the street's facades
FACADE_HEIGHT = (4.0, 15.0)  # m
CARS = 30  # box obstacles of 4.5 x 1.8 x 1.5 m
SWEEP_SEED = 1  # 31.2k returns -> 22.1k voxels


def ray_box_range(origin_dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Slab test of unit rays from the origin against an axis-aligned box; inf where missed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / origin_dirs, hi / origin_dirs  # (N, 3)
    t_near = np.nanmax(np.minimum(t1, t2), axis=1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)


def synthetic_sweep(cfg: SynthConfig, seed: int = 0) -> np.ndarray:
    """(N, 4) x, y, z, intensity of one ring-LiDAR sweep through a street scene."""
    rng = np.random.default_rng(seed)
    el = np.deg2rad(np.linspace(cfg.lidar_fov_down_deg, cfg.lidar_fov_up_deg, cfg.lidar_beams))
    az = np.linspace(-np.pi, np.pi, cfg.lidar_points_per_beam, endpoint=False)
    el, az = [a.ravel() for a in np.meshgrid(el, az, indexing="ij")]
    dirs = np.c_[np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]  # (R, 3)
    rng_hit = np.full(len(dirs), np.inf)
    with np.errstate(divide="ignore"):
        rng_hit = np.where(dirs[:, 2] < 0, -SENSOR_HEIGHT / dirs[:, 2], rng_hit)  # ground
    for side in (-1.0, 1.0):  # facades: planes y = side * d, split into buildings along x
        edges = np.cumsum(rng.uniform(10, 30, 16)) - 150
        for x0, x1 in zip(edges[:-1], edges[1:]):
            d = rng.uniform(*FACADE_RANGE)
            h = rng.uniform(*FACADE_HEIGHT)
            lo = np.array([x0, d if side > 0 else -d - 5, -SENSOR_HEIGHT])
            hi = np.array([x1, d + 5 if side > 0 else -d, h - SENSOR_HEIGHT])
            rng_hit = np.minimum(rng_hit, ray_box_range(dirs, lo, hi))
    for _ in range(CARS):
        c = np.r_[rng.uniform(-50, 50), rng.choice([-1, 1]) * rng.uniform(3, 7)]
        lo = np.r_[c - [2.25, 0.9], -SENSOR_HEIGHT]
        hi = np.r_[c + [2.25, 0.9], 1.5 - SENSOR_HEIGHT]
        rng_hit = np.minimum(rng_hit, ray_box_range(dirs, lo, hi))
    rng_hit += rng.normal(0, cfg.lidar_range_noise, len(rng_hit))
    keep = (rng_hit < cfg.lidar_max_range) & (rng.uniform(size=len(rng_hit)) > cfg.lidar_dropout)
    xyz = dirs[keep] * rng_hit[keep, None]
    return np.c_[xyz, rng.uniform(0, 1, len(xyz))].astype(np.float32)


def voxel_inputs(cfg: Config, cloud: np.ndarray):
    """One sweep -> (coords (V, 4) int32 (b, z, y, x), feats (V, 1), [Z, Y, X], batch_size)."""
    vox = voxelize(cloud, cfg.geometry.voxel_size, cfg.geometry.point_range)
    c = vox.coords  # (V, 3) ix, iy, iz
    coords = np.c_[np.zeros(len(c)), c[:, 2], c[:, 1], c[:, 0]].astype(np.int32)
    return (
        torch.from_numpy(coords),
        torch.from_numpy(cloud[vox.kept, 3:4]),
        list(vox.spatial_shape[::-1]),
        1,
    )


def build_variant(name: str, head: str) -> tuple[Config, LidarStudent]:
    cfg = load_config(str(ROOT / CONFIGS[name]), [f"model.lidar.bev_head={head}"])
    torch.manual_seed(0)
    return cfg, build_lidar_model(cfg.model, cfg.geometry, "cpu").train()


def step(model: LidarStudent, inputs) -> tuple[float, float]:
    """One forward + backward; returns (forward s, backward s)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model(*inputs)
    loss = out.ipv.square().sum() + out.bev[:, 0].sum() + out.voxel_features.mean()
    t1 = time.perf_counter()
    loss.backward()
    return t1 - t0, time.perf_counter() - t1


def profiler_peak_bytes(model: LidarStudent, inputs) -> int:
    """Peak of live bytes allocated through torch's CPU allocator during one fwd + bwd."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, inputs)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = np.cumsum([e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())])
    return int(live.max()) if len(live) else 0


def rss_child(name: str, head: str, threads: int) -> int:
    """Peak RSS growth (bytes) of one fwd + bwd in a fresh process."""
    out = run_module("benchmarks.bench_lidar", ["--rss-child", name, head, "--threads", str(threads)]).stdout
    return int(json.loads(out.strip().splitlines()[-1])["rss_growth"])


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def run_rss_child(name: str, head: str) -> None:
    """Prints peak RSS (VmHWM, per address space, so not inherited from the parent) minus the
    RSS before the step."""
    cfg, model = build_variant(name, head)
    inputs = voxel_inputs(cfg, synthetic_sweep(cfg.synth, SWEEP_SEED))
    before = proc_status_bytes("VmRSS")
    step(model, inputs)
    print(json.dumps({"rss_growth": proc_status_bytes("VmHWM") - before}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rss-child", nargs=2, metavar=("CONFIG", "HEAD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        run_rss_child(*args.rss_child)
        return 0
    variants = {(n, h): build_variant(n, h) for n in args.configs for h in HEADS}
    cfg0 = next(iter(variants.values()))[0]
    cloud = synthetic_sweep(cfg0.synth, SWEEP_SEED)
    inputs = voxel_inputs(cfg0, cloud)
    print(
        f"sweep: {len(cloud)} points -> {len(inputs[0])} voxels, grid {inputs[2]}, "
        f"threads {args.threads}, torch {torch.__version__}"
    )
    times: dict = {k: [] for k in variants}
    for _, model in variants.values():
        step(model, inputs)  # warm-up (index tables, allocator)
    for _ in range(args.repeats):  # interleaved repeats
        for key, (_, model) in variants.items():
            times[key].append(step(model, inputs))
    anchor = statistics.median(f + b for f, b in times[next(iter(variants))])
    print(
        f"{'variant':16s} {'fwd s':>7s} {'bwd s':>7s} {'fwd+bwd s':>9s} {'ratio':>6s} "
        f"{'torch peak MB':>13s} {'RSS growth MB':>13s} {'params':>10s}"
    )
    for key, (_, model) in variants.items():
        fwd = statistics.median(t[0] for t in times[key])
        bwd = statistics.median(t[1] for t in times[key])
        tot = statistics.median(f + b for f, b in times[key])
        peak = profiler_peak_bytes(model, inputs) / 2**20
        rss = rss_child(*key, args.threads) / 2**20
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{key[0] + '/' + key[1]:16s} {fwd:7.3f} {bwd:7.3f} {tot:9.3f} {tot / anchor:6.2f} "
            f"{peak:13.1f} {rss:13.1f} {params:10d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
