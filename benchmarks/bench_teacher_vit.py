"""Benchmark: a ViT-S/14 teacher against the paper's ResNet-50 on this CPU, fp32 and bf16 autocast.

The frozen image teacher's forward (hvdistill/models/image/teacher.py: `ImageTeacher`, random
weights, eval, no_grad, the 64-d head and its upsampling included: what pretraining runs per
step) on one nuScenes sample's images: a batch of 6 crops at the paper's 224 x 416.
- ResNet-50 dilated to output stride 4 as the paper (56 x 104 cells), BatchNorm folded and
  channels-last (the defaults);
- ViT-S/14 (DINOv2 layout) at its 14 px patch: the crop is padded to 224 x 420, 16 x 30 tokens.
Each in fp32 and under CPU bf16 autocast. Time: medians of `--repeats` interleaved rounds
(every teacher and dtype once per round, in this process, after one warm-up each), so both
teachers see the same load on a shared machine. Printed: seconds per batch, ms per image,
images/s, the ViT / ResNet ratio at each dtype, bf16 / fp32, forward GFLOP per image (counted
with torch's FlopCounterMode on one image), and, with `--memory`, the peak resident memory one
forward adds, each variant in a fresh process (benchmarks/peak_memory.py). The header says what
`precision.image_dtype: auto` picks on this machine and why.

    .venv/bin/python -m benchmarks.bench_teacher_vit [--repeats 3] [--batch 6] [--threads N] [--memory]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.peak_memory import PeakRSS, run_module
from hvdistill.config import PrecisionConfig
from hvdistill.models.image.teacher import ImageTeacher
from hvdistill.precision import choose_image_dtype, cpu_bf16_features, cpu_capability

CROP = (224, 416)  # the paper's crop; the ViT pads it to 224 x 420
TEACHERS = {"vit_small_patch14": "ViT-S/14", "resnet50": "ResNet-50"}
RESNET_STRIDE = 4  # the paper's dilation; a ViT's stride is its patch
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def teacher_for(arch: str, dtype: torch.dtype) -> ImageTeacher:
    torch.manual_seed(0)
    return ImageTeacher(arch, feature_dim=64, output_stride=RESNET_STRIDE, compute_dtype=dtype).eval()


def images_for(batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, *CROP, generator=torch.Generator().manual_seed(0))  # (B, 3, 224, 416)


def forward(teacher: ImageTeacher, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one frozen forward, and its head output (B, 64, Hf, Wf) float32."""
    start = time.perf_counter()
    with torch.no_grad():
        head = teacher(images).head
    return time.perf_counter() - start, head


def gflop_per_image(teacher: ImageTeacher) -> float:
    """Forward GFLOP of one 224 x 416 image (matmuls and convolutions, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        teacher(images_for(1))
    return counter.get_total_flops() / 1e9


def measure(batch: int, repeats: int) -> dict[tuple[str, str], dict[str, float]]:
    """(arch, dtype) -> median seconds per batch and the head's cosine to fp32, interleaved rounds."""
    images = images_for(batch)
    variants = [(a, d) for d in DTYPES for a in TEACHERS]
    teachers = {v: teacher_for(v[0], DTYPES[v[1]]) for v in variants}
    heads = {v: forward(teachers[v], images)[1] for v in variants}  # warm-up
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            times[v].append(forward(teachers[v], images)[0])
    out = {}
    for arch, dt in variants:
        cos = torch.nn.functional.cosine_similarity(heads[(arch, dt)], heads[(arch, "fp32")], dim=1)
        out[(arch, dt)] = {"seconds": statistics.median(times[(arch, dt)]), "cos": float(cos.mean())}
    for arch in TEACHERS:
        out[(arch, "fp32")]["gflop"] = gflop_per_image(teachers[(arch, "fp32")])
    return out


def peak_mb(arch: str, dtype: str, batch: int, threads: int) -> float:
    """Resident memory one forward adds, measured in a fresh process (`--peak-of`)."""
    args = ["--peak-of", arch, dtype, "--batch", str(batch), "--threads", str(threads)]
    done = run_module("benchmarks.bench_teacher_vit", args)
    return float(done.stdout.strip().splitlines()[-1])


def _peak_here(arch: str, dtype: str, batch: int) -> None:
    teacher, images = teacher_for(arch, DTYPES[dtype]), images_for(batch)
    with PeakRSS() as mem:
        forward(teacher, images)
    print(f"{mem.added_mb:.0f}")


def _report(rows: dict, batch: int, memory: dict) -> None:
    columns = ["teacher", "dtype", "s / batch", "ms / image", "images / s", "ViT / ResNet time"]
    columns += ["bf16 / fp32", "cos to fp32", "GFLOP / image", "peak MB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for (arch, dt), r in rows.items():
        s = r["seconds"]
        versus = s / rows[("resnet50", dt)]["seconds"]
        gflop = rows[(arch, "fp32")]["gflop"]
        mb = f"{memory[(arch, dt)]:.0f}" if memory else "-"
        to_fp32 = s / rows[(arch, "fp32")]["seconds"]
        print(
            f"| {TEACHERS[arch]} | {dt} | {s:.3f} | {1000 * s / batch:.0f} | {batch / s:.2f} | "
            f"{versus:.3f} | {to_fp32:.2f} | {r['cos']:.4f} | {gflop:.1f} | {mb} |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=6, help="crops per forward (6: one nuScenes sample)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--memory", action="store_true", help="also the peak memory, each variant in a fresh process"
    )
    p.add_argument("--peak-of", nargs=2, metavar=("ARCH", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_of:
        _peak_here(*args.peak_of, args.batch)
        return
    auto = choose_image_dtype(PrecisionConfig(), "cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU capability {cpu_capability()}, "
        f"native bf16: {', '.join(cpu_bf16_features()) or 'none'}; {auto.describe('auto')}"
    )
    print(f"batch {args.batch} x {CROP[0]} x {CROP[1]}, medians of {args.repeats} interleaved rounds")
    rows = measure(args.batch, args.repeats)
    threads = torch.get_num_threads()
    memory = {v: peak_mb(*v, args.batch, threads) for v in rows} if args.memory else {}
    _report(rows, args.batch, memory)


if __name__ == "__main__":
    main()
