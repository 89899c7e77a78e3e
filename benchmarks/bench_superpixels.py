"""SLIC superpixels at sharding time: CPU time and quality of today's settings vs cheaper ones.

Generates (or reuses, --data) a synthetic nuScenes-format world at 1600x900 with the renderer's
per-pixel class maps as side outputs, takes every camera image to the stored size exactly as
sharding does (`hvdistill.data.prepare.resize_image`, 800x450) and the class map with nearest
neighbour, and runs each candidate on every image, candidates interleaved within each repeat.

Printed per candidate, side by side in one run, with ratios against the first row (today):
- CPU s/image: `time.process_time` (all threads of this process), median over repeats of the
  mean over images; wall s/image likewise (`time.perf_counter`; noisy on a shared machine).
- BR: boundary recall, the fraction of ground-truth boundary pixels with a superpixel boundary
  pixel within BOUNDARY_TOLERANCE_PX (Chebyshev distance); a boundary pixel is one whose right
  or lower neighbour carries another label (`boundary_map`). 2 px is ~0.0025 of the 800x450
  image diagonal, the order of tolerance superpixel benchmarks use.
- UE: under-segmentation error as corrected by Neubert & Protzel (2012):
  sum over superpixels S and ground-truth segments G that overlap of min(|S & G|, |S - G|), / N.
- ASA: achievable segmentation accuracy, sum over S of max_G |S & G|, / N.
- segments: mean number of superpixels per image.
Then the whole per-sample step sharding runs (`prepare_sample`: resize, pairs, 6 x SLIC) today
vs the default, CPU per sample, and the projection to nuScenes trainval on 64 cores.
Ground-truth segments are the renderer's semantic classes (nuScenes-lidarseg ids, sky = 0), the
labels superpixel pooling should not mix. The goal (issue 9, item 8): CPU <= 1/3 of today's,
BR not lower and UE not higher than today's by more than 2 points, segment count within 10%.

    .venv/bin/python -m benchmarks.bench_superpixels [--data /tmp/hvd-bench-superpixels] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from hvdistill.config import DataConfig, SuperpixelConfig, SynthConfig
from hvdistill.data.prepare import compute_superpixels, resize_image, stored_size, upsample_nearest

VERSION = "v1.0-trainval"
BOUNDARY_TOLERANCE_PX = 2
GOAL_CPU_RATIO = 1 / 3
GOAL_POINTS = 2.0  # BR and UE, percentage points
GOAL_COUNT_RATIO = 0.10
TRAINVAL_KEYFRAMES = 34_149  # nuScenes v1.0-trainval keyframes (6 cameras each)
PROJECTION_CORES = 64

# ------------------------------------------------------------------------------------------
# Metrics


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W) bool: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def boundary_recall(segments: np.ndarray, truth: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE_PX) -> float:
    """Fraction of ground-truth boundary pixels within `tolerance` px of a superpixel boundary."""
    truth_edge = boundary_map(truth)
    if not truth_edge.any():
        return 1.0
    size = 2 * tolerance + 1
    near = ndimage.binary_dilation(boundary_map(segments), structure=np.ones((size, size), dtype=bool))
    return float((truth_edge & near).sum() / truth_edge.sum())


def contingency(segments: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n_segments, n_truth) pixel counts |S & G| (ids compacted to 0..n-1 first)."""
    _, s = np.unique(segments, return_inverse=True)
    _, g = np.unique(truth, return_inverse=True)
    n_g = int(g.max()) + 1
    counts = np.bincount(s.ravel() * n_g + g.ravel(), minlength=(int(s.max()) + 1) * n_g)
    return counts.reshape(-1, n_g)


def undersegmentation_error(segments: np.ndarray, truth: np.ndarray) -> float:
    """Neubert & Protzel's corrected UE: sum_{S, G} min(|S & G|, |S - G|) / N (0 is best)."""
    table = contingency(segments, truth)
    rest = table.sum(axis=1, keepdims=True) - table  # |S - G|
    return float(np.minimum(table, rest).sum() / segments.size)


def achievable_segmentation_accuracy(segments: np.ndarray, truth: np.ndarray) -> float:
    """ASA: sum_S max_G |S & G| / N (1 is best)."""
    return float(contingency(segments, truth).max(axis=1).sum() / segments.size)


def segment_count(segments: np.ndarray) -> int:
    return int(np.unique(segments).size)


# ------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Frame:
    """One camera image as sharding sees it, with the renderer's classes at the stored size."""

    source: np.ndarray  # (900, 1600, 3) uint8, the image as the dataset has it
    stored: np.ndarray  # (450, 800, 3) uint8, resized exactly as prepare_camera does
    truth: np.ndarray  # (450, 800) uint8 class ids (nearest-neighbour resize of the class map)

    @property
    def source_size(self) -> tuple[int, int]:
        return self.source.shape[1], self.source.shape[0]


Segmenter = Callable[[Frame], np.ndarray]  # -> (H, W) ids at the stored size


def ensure_dataset(path: Path, scenes: int, frames: int) -> Path:
    """A synthetic nuScenes root with side outputs at `path` (generated once, reused after)."""
    if (path / VERSION / "sample.json").exists() and (path / "side_outputs").is_dir():
        return path
    from hvdistill.synthetic import write_nuscenes

    cfg = SynthConfig(scenes=scenes, frames_per_scene=frames, image_width=1600, image_height=900)
    t = time.perf_counter()
    write_nuscenes(path, cfg, version=VERSION, side_outputs=True, progress=False)
    print(f"generated {scenes}x{frames} samples (6 cameras, 1600x900) in {time.perf_counter() - t:.0f} s")
    return path


def load_frames(root: Path, limit: int) -> list[Frame]:
    """Up to `limit` camera images of the root, with their class maps."""
    from hvdistill.synthetic import read_side_outputs

    cfg = DataConfig()
    frames = []
    for path in sorted(root.glob("samples/CAM_*/*.jpg"))[:limit]:
        source = np.asarray(Image.open(path).convert("RGB"))  # (900, 1600, 3)
        size = stored_size((source.shape[1], source.shape[0]), cfg)
        classes, _ = read_side_outputs(root, path.relative_to(root))
        truth = np.asarray(Image.fromarray(classes).resize(size, Image.NEAREST))  # (H, W)
        frames.append(Frame(source, resize_image(source, size), truth))
    if not frames:
        raise SystemExit(f"{root}: no camera image under samples/CAM_*/")
    return frames


# ------------------------------------------------------------------------------------------
# Candidates

TODAY = SuperpixelConfig(scale=1.0, sigma=6.0)  # SLIC of the 800x450 image, sigma 3 px there


def library(cfg: SuperpixelConfig) -> Segmenter:
    """The library's own `compute_superpixels` with `cfg` (what sharding runs)."""
    return lambda f: compute_superpixels(f.stored, cfg, source_size=f.source_size)


def published(f: Frame) -> np.ndarray:
    """The published recipe: SLIC of the 1600x900 source at sigma 3, ids resized to 800x450."""
    ids = compute_superpixels(f.source, SuperpixelConfig(scale=1.0))
    return upsample_nearest(ids, (f.stored.shape[1], f.stored.shape[0]))


def fast_slic_candidate(n_segments: int, compactness: float) -> Segmenter | None:
    """fast-slic (PyPI, 2019) on the stored image, one thread, if installed (not a dependency)."""
    try:
        from fast_slic import Slic
    except ImportError:
        return None

    def run(f: Frame) -> np.ndarray:
        model = Slic(num_components=n_segments, compactness=compactness, num_threads=1)
        return model.iterate(np.ascontiguousarray(f.stored))

    return run


def candidates(with_published: bool) -> list[tuple[str, Segmenter]]:
    """(name, segmenter); the first is today's setting, the reference of every ratio."""
    rep = dataclasses.replace
    rows = [
        ("today: 800x450, sigma 3 px (scale 1, sigma 6)", library(TODAY)),
        ("800x450, 5 iterations", library(rep(TODAY, max_num_iter=5))),
        ("800x450, sigma 1.5 px (sigma 3)", library(rep(TODAY, sigma=3.0))),
        ("scale 0.75, sigma 3", library(rep(TODAY, scale=0.75, sigma=3.0))),
        ("scale 0.5, sigma 6 (today's smoothing)", library(rep(TODAY, scale=0.5))),
        ("scale 0.5, sigma 3, 5 iterations", library(rep(TODAY, scale=0.5, sigma=3.0, max_num_iter=5))),
        ("scale 0.4, sigma 3", library(rep(TODAY, scale=0.4, sigma=3.0))),
        (
            f"default: scale {SuperpixelConfig().scale:g}, sigma {SuperpixelConfig().sigma:g}",
            library(SuperpixelConfig()),
        ),
    ]
    fast = fast_slic_candidate(TODAY.n_segments, 10.0)
    if fast is not None:
        rows.append(("fast-slic 0.4.0, compactness 10, 1 thread", fast))
    if with_published:
        rows.append(("published: 1600x900, sigma 3", published))
    return rows


# ------------------------------------------------------------------------------------------
# Measurement


@dataclasses.dataclass
class Result:
    cpu: list[float] = dataclasses.field(default_factory=list)  # s/image per repeat
    wall: list[float] = dataclasses.field(default_factory=list)
    recall: float = 0.0
    ue: float = 0.0
    asa: float = 0.0
    segments: float = 0.0


def quality(result: Result, outputs: list[np.ndarray], frames: list[Frame]) -> None:
    """Mean BR, UE, ASA and segment count of `outputs` against the class maps."""
    truths = [f.truth for f in frames]
    result.recall = float(np.mean([boundary_recall(s, t) for s, t in zip(outputs, truths)]))
    result.ue = float(np.mean([undersegmentation_error(s, t) for s, t in zip(outputs, truths)]))
    result.asa = float(np.mean([achievable_segmentation_accuracy(s, t) for s, t in zip(outputs, truths)]))
    result.segments = float(np.mean([segment_count(s) for s in outputs]))


def measure(rows: list[tuple[str, Segmenter]], frames: list[Frame], repeats: int) -> dict[str, Result]:
    """Time every candidate on every image, candidates interleaved within each repeat."""
    results = {name: Result() for name, _ in rows}
    for r in range(repeats):
        for name, run in rows:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            outputs = [run(f) for f in frames]
            results[name].cpu.append((time.process_time() - cpu0) / len(frames))
            results[name].wall.append((time.perf_counter() - wall0) / len(frames))
            if r == 0:
                quality(results[name], outputs, frames)
        print(f"repeat {r + 1}/{repeats} done", flush=True)
    return results


def meets_goal(res: Result, ref: Result) -> bool:
    cpu = statistics.median(res.cpu) / statistics.median(ref.cpu)
    return (
        cpu <= GOAL_CPU_RATIO
        and res.recall >= ref.recall - GOAL_POINTS / 100
        and res.ue <= ref.ue + GOAL_POINTS / 100
        and abs(res.segments / ref.segments - 1) <= GOAL_COUNT_RATIO
    )


def report(results: dict[str, Result], n_images: int, repeats: int) -> None:
    ref = next(iter(results.values()))
    ref_cpu, ref_wall = statistics.median(ref.cpu), statistics.median(ref.wall)
    print(
        f"\n{n_images} images at 800x450, medians of {repeats} repeats; BR within {BOUNDARY_TOLERANCE_PX} px"
    )
    head = f"{'candidate':48s} {'CPU s':>6s} {'ratio':>5s} {'wall s':>6s} {'ratio':>5s}"
    print(head + f" {'BR %':>5s} {'UE %':>5s} {'ASA %':>5s} {'segs':>5s} {'/ref':>5s} goal")
    for name, res in results.items():
        cpu, wall = statistics.median(res.cpu), statistics.median(res.wall)
        print(
            f"{name:48s} {cpu:6.3f} {cpu / ref_cpu:5.2f} {wall:6.3f} {wall / ref_wall:5.2f}"
            f" {100 * res.recall:5.1f} {100 * res.ue:5.2f} {100 * res.asa:5.2f} {res.segments:5.1f}"
            f" {res.segments / ref.segments:5.2f} {'yes' if meets_goal(res, ref) else 'no'}"
        )
    goal = (
        f"CPU ratio <= {GOAL_CPU_RATIO:.2f}, BR >= ref - {GOAL_POINTS:g} pts, UE <= ref + {GOAL_POINTS:g} pts"
    )
    print(f"goal: {goal}, segment count within {100 * GOAL_COUNT_RATIO:g}% of ref (the first row)")


# ------------------------------------------------------------------------------------------
# Whole samples


def sample_cpu(root: Path, samples: int, repeats: int) -> dict[str, float]:
    """Median CPU s of `prepare_sample` per sample, today vs default, plus one devkit read."""
    from hvdistill.config import SourceConfig
    from hvdistill.data.prepare import prepare_sample
    from hvdistill.data.sources import build_source

    source = build_source(SourceConfig(name="nuscenes", root=str(root), version=VERSION, split="train"))
    keys = [k for chunk in source.chunks() for k in source.keys(chunk)][:samples]
    t = time.process_time()
    read = [source.read(k) for k in keys]
    out = {"read (devkit, 6 JPEG decodes)": (time.process_time() - t) / len(keys)}
    configs = {
        "prepare_sample, today": DataConfig(superpixels=TODAY),
        "prepare_sample, default": DataConfig(),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, cfg in configs.items():
            t = time.process_time()
            for sample in read:
                prepare_sample(sample, cfg)
            times[name].append((time.process_time() - t) / len(read))
    out.update({name: statistics.median(ts) for name, ts in times.items()})
    return out


def projection(per_sample: dict[str, float]) -> None:
    """CPU per sample and nuScenes trainval (34,149 keyframes) on 64 cores, today vs default."""
    print("\nper sample (6 cameras), CPU s (prepare_sample: medians over the repeats):")
    for name, cpu in per_sample.items():
        print(f"  {name:36s} {cpu:6.3f}")
    today, new = per_sample["prepare_sample, today"], per_sample["prepare_sample, default"]
    print(f"  ratio default / today: {new / today:.2f}")
    for name, cpu in (("today", today), ("default", new)):
        minutes = TRAINVAL_KEYFRAMES * cpu / PROJECTION_CORES / 60
        print(f"  trainval prepare_sample on {PROJECTION_CORES} cores, {name}: {minutes:.1f} min")


def cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="synthetic nuScenes root with side outputs (generated if missing)")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--images", type=int, default=24, help="camera images to use (6 per sample)")
    p.add_argument("--samples", type=int, default=2, help="whole samples for the per-sample CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--published", action="store_true", help="add SLIC at 1600x900 (slow: ~1.6 s/image)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hvd-superpixels-") as tmp:
        root = ensure_dataset(Path(args.data or tmp), args.scenes, args.frames)
        frames = load_frames(root, args.images)
        per_sample = sample_cpu(root, args.samples, args.repeats)
    results = measure(candidates(args.published), frames, args.repeats)
    report(results, len(frames), args.repeats)
    projection(per_sample)
    print(f"CPU: {cpu_model()}; load average at the end: {os.getloadavg()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
