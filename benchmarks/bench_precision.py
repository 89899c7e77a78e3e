"""Benchmark: the frozen image teacher's forward in fp32 vs bf16 autocast on this CPU.

`precision.image_dtype: auto` picks bf16 only where the hardware runs it natively
(hvdistill/precision.py); this measures what that choice buys or costs here. Two sizes:
- tiny:  ResNet-18, one 112 x 208 crop (configs/demo.yaml), output stride 4;
- paper: ResNet-50, one 224 x 416 crop (the published recipe), output stride 4 (dilated).
Random weights (the time does not depend on them), eval mode, no_grad as in training (the
backbone is frozen). Time: medians of interleaved repeats (fp32, bf16, fp32, ...) after one
warm-up of each, in this process. Printed with the CPU's dispatch capability, its native bf16
features, and what `auto` resolves to here; also the cosine similarity of the two outputs.

    .venv/bin/python -m benchmarks.bench_precision [--repeats 3] [--sizes tiny paper] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hvdistill.config import PrecisionConfig
from hvdistill.models.image.teacher import ImageTeacher
from hvdistill.precision import choose_image_dtype, cpu_bf16_features, cpu_capability

SIZES = {"tiny": ("resnet18", 112, 208), "paper": ("resnet50", 224, 416)}
DTYPES = (torch.float32, torch.bfloat16)


def teacher_for(arch: str, dtype: torch.dtype) -> ImageTeacher:
    torch.manual_seed(0)
    return ImageTeacher(arch, feature_dim=64, output_stride=4, compute_dtype=dtype).eval()


def forward_seconds(teacher: ImageTeacher, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = teacher(images).head  # (1, 64, H/4, W/4) float32
    return time.perf_counter() - start, out


def measure(size: str, repeats: int) -> dict[str, float]:
    arch, h, w = SIZES[size]
    images = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    teachers = {d: teacher_for(arch, d) for d in DTYPES}
    outs = {d: forward_seconds(teachers[d], images)[1] for d in DTYPES}  # warm-up
    times: dict[torch.dtype, list[float]] = {d: [] for d in DTYPES}
    for _ in range(repeats):
        for d in DTYPES:
            times[d].append(forward_seconds(teachers[d], images)[0])
    cos = torch.nn.functional.cosine_similarity(outs[torch.float32], outs[torch.bfloat16], dim=1)
    fp32, bf16 = (statistics.median(times[d]) for d in DTYPES)
    return {"fp32": fp32, "bf16": bf16, "cos": float(cos.mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "paper"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = choose_image_dtype(PrecisionConfig(), "cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU capability "
        f"{cpu_capability()}, native bf16: {', '.join(cpu_bf16_features()) or 'none'}; "
        f"auto -> {auto.name}"
    )
    print(f"{'size':<6} {'arch':<9} {'crop':>9} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32':>10} {'cos':>8}")
    for size in args.sizes:
        arch, h, w = SIZES[size]
        r = measure(size, args.repeats)
        print(
            f"{size:<6} {arch:<9} {h:>4}x{w:<4} {r['fp32']:>8.3f} {r['bf16']:>8.3f} "
            f"{r['bf16'] / r['fp32']:>10.2f} {r['cos']:>8.5f}"
        )


if __name__ == "__main__":
    main()
