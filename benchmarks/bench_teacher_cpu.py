"""Benchmark: the frozen teacher's fp32 forward on this CPU, plain vs prepared for inference.

What `model.image.fold_batchnorm` and `model.image.channels_last` (hvdistill/models/image/
inference.py) buy where the image side runs in fp32 (`precision.image_dtype: auto` on a CPU
without native bf16, or forced with `precision.image_dtype=float32`). Four variants of the same
teacher (same random weights, BatchNorm statistics randomised so the fold is not trivial):
plain, BatchNorm folded, channels-last, both. Two sizes:
- demo:  ResNet-18, the 6 crops of one sample at 112 x 208 (configs/demo.yaml), output stride 4;
- paper: ResNet-50, one 224 x 416 crop (the published recipe), output stride 4 (dilated).
Time: medians of interleaved repeats after one warm-up each, the teacher's whole forward (with
the head) under no_grad, in this process, `--threads` torch threads (1 = one Ray worker's CPU).
Also printed: each variant's time relative to plain, and its largest difference to plain's head
output relative to that output's largest magnitude.

    .venv/bin/python -m benchmarks.bench_teacher_cpu [--repeats 3] [--sizes demo paper] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hvdistill.models.image.teacher import ImageTeacher
from hvdistill.precision import cpu_bf16_features, cpu_capability

SIZES = {"demo": ("resnet18", 6, 112, 208), "paper": ("resnet50", 1, 224, 416)}
VARIANTS = {
    "plain": (False, False),
    "fold": (True, False),
    "channels_last": (False, True),
    "both": (True, True),
}


def teacher_for(arch: str, fold: bool, channels_last: bool) -> ImageTeacher:
    torch.manual_seed(0)
    teacher = ImageTeacher(arch, fold_batchnorm=fold, channels_last=channels_last).eval()
    g = torch.Generator().manual_seed(1)
    for m in teacher.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return teacher


def forward_seconds(teacher: ImageTeacher, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = teacher(images).head  # (N, 64, H/4, W/4) float32
    return time.perf_counter() - start, out


def measure(size: str, repeats: int) -> dict[str, tuple[float, float]]:
    """variant -> (median seconds, largest |difference| to plain / largest |plain|)."""
    arch, crops, h, w = SIZES[size]
    images = torch.rand(crops, 3, h, w, generator=torch.Generator().manual_seed(0))
    teachers = {name: teacher_for(arch, *flags) for name, flags in VARIANTS.items()}
    outs = {name: forward_seconds(t, images)[1] for name, t in teachers.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, t in teachers.items():
            times[name].append(forward_seconds(t, images)[0])
    scale = outs["plain"].abs().max()
    return {
        name: (statistics.median(times[name]), float((outs[name] - outs["plain"]).abs().max() / scale))
        for name in VARIANTS
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["demo", "paper"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = one Ray worker's CPU)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; CPU capability "
        f"{cpu_capability()}, native bf16: {', '.join(cpu_bf16_features()) or 'none'}"
    )
    print("| size | arch | crops | variant | seconds | vs plain | max rel. difference |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        arch, crops, h, w = SIZES[size]
        rows = measure(size, args.repeats)
        base = rows["plain"][0]
        for name, (seconds, diff) in rows.items():
            print(
                f"| {size} | {arch} | {crops} x {h}x{w} | {name} | {seconds:.3f} | "
                f"{seconds / base:.2f} | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
