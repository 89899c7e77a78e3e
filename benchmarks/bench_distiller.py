"""Benchmark: forward + backward of the whole distiller and loss, split by component.

One synthetic nuScenes-format sample (6 cameras, ~30k points) is generated, read through the
nuScenes source, prepared as sharding prepares it (stored images, pairs, SLIC), augmented and
collated; then for each config the distiller and the hybrid-view loss run forward + backward.
- Time: medians of `--repeats` steps after one warm-up step, per component: collate, student
  (spconv UNet + heads), teacher (frozen dilated ResNet, autocast in the dtype precision.image_dtype
  resolves to: `auto` = bf16 only on native-bf16 hardware), depth lift (bridge,
  depth net, BEV pooling), loss (pooling, InfoNCE, depth BCE, BEV InfoNCE), and the whole
  backward pass; then, to split the backward pass, the student's and the lift's backward each
  timed alone on a fresh forward of that component (gradient of the sum of its outputs).
- Peak memory: each config runs in a fresh subprocess that reports the Linux resident-set
  high-water mark (VmHWM) reset right before the measured steps, minus the resident size then.

    .venv/bin/python -m benchmarks.bench_distiller [--configs configs/tiny.yaml paper]
        [--repeats 3] [--threads N] [--set precision.image_dtype=float32 ...]
A --configs entry may carry its own overrides after the config, in one quoted word:
"configs/demo.yaml model.image.fold_batchnorm=false"; "step vs first" is each row's step time
over the first row's.
"paper" means the defaults (the published recipe) with a randomly initialised ResNet-50 teacher.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.peak_memory import PeakRSS, run_module
from hvdistill.config import SourceConfig, SynthConfig, load_config


def make_sample(workdir: Path, data_cfg):
    """One prepared synthetic sample at nuScenes-like resolution."""
    from hvdistill.data.prepare import prepare_sample
    from hvdistill.data.sources import build_source
    from hvdistill.synthetic import write_nuscenes

    root = write_nuscenes(
        workdir / "nus",
        SynthConfig(scenes=1, frames_per_scene=1, image_width=800, image_height=450),
        progress=False,
    )
    source = build_source(
        SourceConfig(name="nuscenes", root=str(root), version="v1.0-trainval", split="train")
    )
    key = source.keys(source.chunks()[0])[0]
    return prepare_sample(source.read(key), data_cfg)


def timed(times: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    times.setdefault(name, []).append(time.perf_counter() - start)
    return out


def step(model, loss_fn, sample, cfg, rng, times):
    """One forward + backward with per-component timings."""
    from hvdistill.data.augment import augment_sample
    from hvdistill.data.collate import collate
    from hvdistill.loss_inputs import LossInputs, pair_superpixel_ids

    b = timed(
        times,
        "collate",
        lambda: collate([augment_sample(sample, cfg.augment, cfg.geometry, rng)], cfg.geometry),
    )
    lidar = timed(
        times, "student", model.student, b.voxel_coords, b.voxel_features, b.spatial_shape, b.batch_size
    )
    image = timed(times, "teacher", model.teacher, b.images)
    ib = b.image_sample
    lifted = timed(
        times,
        "lift",
        model.lift,
        image.head,
        b.intrinsics,
        b.camera_to_lidar,
        b.image_aug,
        b.lidar_aug[ib],
        ib,
        b.batch_size,
    )
    inputs = LossInputs(
        lidar.ipv[b.point_to_voxel[b.pair_point]],
        pair_superpixel_ids(b.superpixels, b.pair_image, b.pair_uv),
        image.ipv,
        b.superpixels,
        lifted.depth_logits,
        b.pair_image,
        b.pair_uv,
        b.pair_depth,
        lidar.bev,
        lidar.bev_indices,
        lifted.bev,
    )
    terms = timed(times, "loss", loss_fn, inputs, 0)
    timed(times, "backward", terms.total.backward)
    model.zero_grad(set_to_none=True)
    lidar = model.student(b.voxel_coords, b.voxel_features, b.spatial_shape, b.batch_size)
    timed(times, "bwd student", (lidar.ipv.sum() + lidar.bev.sum()).backward)
    head = image.head.detach().requires_grad_()
    lifted = model.lift(head, b.intrinsics, b.camera_to_lidar, b.image_aug, b.lidar_aug[ib], ib, b.batch_size)
    timed(times, "bwd lift", (lifted.depth_logits.sum() + lifted.bev.sum()).backward)
    model.zero_grad(set_to_none=True)
    return len(b.voxel_coords), len(b.pair_point)


def child(args) -> None:
    """Measure one config; print a JSON line."""
    from hvdistill.losses.total import build_hybrid_view_loss
    from hvdistill.models.distiller import build_distiller

    name, *own = args.child.split()  # "configs/demo.yaml key=value ...": a config and its own overrides
    overrides = (["model.image.random_init=true"] if name == "paper" else []) + args.set + own
    cfg = load_config(None if name == "paper" else name, overrides)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sample = make_sample(Path(tmp), cfg.data)
    torch.manual_seed(0)
    model, loss_fn = build_distiller(cfg), build_hybrid_view_loss(cfg)
    model.train()
    rng = np.random.default_rng(0)
    step(model, loss_fn, sample, cfg, rng, {})  # warm-up
    times: dict[str, list[float]] = {}
    with PeakRSS() as mem:
        for _ in range(args.repeats):
            voxels, pairs = step(model, loss_fn, sample, cfg, rng, times)
    peak = mem.added_mb * 1024
    print(
        json.dumps(
            {
                "config": args.child,
                "times": {k: statistics.median(v) for k, v in times.items()},
                "peak_mb": peak / 1024,
                "voxels": voxels,
                "pairs": pairs,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "paper"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], help="key=value overrides for every config")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per step")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}, overrides {args.set}")
    rows = []
    for config in args.configs:
        out = run_module(
            "benchmarks.bench_distiller",
            [
                "--child",
                config,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                "--set",
                *args.set,
            ],
            check=False,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(f"{config}: failed\n{out.stderr[-3000:]}")
            continue
        rows.append(json.loads(lines[-1]))
    comps = ["collate", "student", "teacher", "lift", "loss", "backward", "bwd student", "bwd lift"]
    header = " | ".join(comps) + " | step (fwd + bwd) | step vs first | peak MB |"
    print("| config | params (M) | voxels | pairs | " + header)
    print("|---" * (len(comps) + 7) + "|")
    steps = [sum(r["times"][c] for c in comps[:6]) for r in rows]
    for r, step_s in zip(rows, steps):
        t = r["times"]
        print(
            f"| {r['config']} | {r['params_m']:.1f} | {r['voxels']} | {r['pairs']} | "
            + " | ".join(f"{t[c]:.2f} s" for c in comps)
            + f" | {step_s:.2f} s | {step_s / steps[0]:.2f} | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
