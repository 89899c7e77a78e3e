"""`hvdistill inspect`: read a dataset through its source and print what it holds.

    hvdistill inspect --source nuscenes|semantickitti|argoverse2 --root DIR [--version V]
                      [--split train|val] [--split-file F] [--limit N]

Reads up to N samples (0 = all) of the split and reports scenes/sequences/logs, samples, points per
sweep, cameras and image sizes, the label histogram by class name, and the point-to-pixel
pairs per camera under the projection rules of `DataConfig`. Damaged samples are listed
with the file and reason (SampleReadError) and make the exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.sample import Sample
from hvdistill.data.sources import build_source
from hvdistill.data.sources.base import DataSource
from hvdistill.data.sources.labels import class_names
from hvdistill.geometry.projection import project_points


@dataclass
class InspectReport:
    """What `inspect_source` found; `format_report` renders it."""

    source: str
    version: str
    split: str
    label_map: str
    chunks: list[str]
    samples_in_split: int
    samples_read: int = 0
    points: list[int] = field(default_factory=list)  # points per read sweep
    image_sizes: dict[str, Counter] = field(default_factory=dict)  # camera -> Counter of (W, H)
    pairs: dict[str, list[int]] = field(default_factory=dict)  # camera -> pairs per sample
    label_counts: np.ndarray | None = None  # (n_classes,) int64 points per class
    errors: list[SampleReadError] = field(default_factory=list)


def add_sample(report: InspectReport, sample: Sample, data: DataConfig) -> None:
    """Fold one sample's points, cameras, pairs and labels into the report."""
    report.samples_read += 1
    report.points.append(len(sample.points))
    for i, cam in enumerate(sample.cameras):
        width, height = cam.size
        report.image_sizes.setdefault(cam.name, Counter())[(width, height)] += 1
        proj = project_points(
            sample.points[:, :3],
            sample.lidar_to_camera(i),
            cam.intrinsics,
            width,
            height,
            min_depth=data.min_depth,
            border=data.image_border,
        )
        report.pairs.setdefault(cam.name, []).append(len(proj.index))
    if sample.labels is not None and report.label_map:
        n_classes = len(class_names(report.label_map))
        counts = np.bincount(sample.labels, minlength=n_classes)[:n_classes]  # (n_classes,)
        report.label_counts = counts if report.label_counts is None else report.label_counts + counts


def inspect_source(source: DataSource, limit: int = 0, data: DataConfig | None = None) -> InspectReport:
    """Read up to `limit` samples (0 = all) of `source` in chunk/key order into a report."""
    data = data or DataConfig()
    chunks = source.chunks()
    keys = [key for chunk in chunks for key in source.keys(chunk)]
    report = InspectReport(
        source=source.name,
        version=source.version,
        split=source.split,
        label_map=source.label_map_name,
        chunks=chunks,
        samples_in_split=len(keys),
    )
    for key in keys[:limit] if limit > 0 else keys:
        try:
            add_sample(report, source.read(key), data)
        except SampleReadError as exc:
            report.errors.append(exc)
    return report


def _stats(values: list[int]) -> str:
    if not values:
        return "-"
    return f"min {min(values)}, mean {np.mean(values):.0f}, max {max(values)}"


def format_report(report: InspectReport) -> str:
    """Human-readable lines of a report."""
    shown = ", ".join(report.chunks[:8]) + (" ..." if len(report.chunks) > 8 else "")
    lines = [
        f"source      {report.source} ({report.version}), split {report.split}",
        f"chunks      {len(report.chunks)}: {shown or '(none in this split)'}",
        f"samples     {report.samples_in_split} in split, {report.samples_read} read, "
        f"{len(report.errors)} damaged",
        f"points      per sweep: {_stats(report.points)}",
    ]
    width = max([16, *map(len, report.image_sizes)])
    for name, sizes in report.image_sizes.items():
        size_text = ", ".join(f"{w}x{h} (x{n})" for (w, h), n in sizes.items())
        pairs = _stats(report.pairs[name])
        lines.append(f"camera      {name:<{width}} {size_text}; pairs per sample: {pairs}")
    if report.label_counts is not None:
        total = max(int(report.label_counts.sum()), 1)
        names = class_names(report.label_map)
        lines.append(f"labels      {report.label_map}, {total} points")
        for cls in np.argsort(-report.label_counts):
            if report.label_counts[cls]:
                lines.append(
                    f"  {cls:>3} {names[cls]:<22} {report.label_counts[cls]:>10} "
                    f"{100.0 * report.label_counts[cls] / total:6.2f}%"
                )
    else:
        lines.append("labels      none")
    lines += [f"damaged     {e.key}: {e.reason} ({e.path})" for e in report.errors]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = SourceConfig()
    p = argparse.ArgumentParser(prog="hvdistill inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=["nuscenes", "semantickitti", "argoverse2"], required=True)
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument(
        "--version",
        default="",
        help=f"nuScenes table folder (default: the only v1.0-* folder in the root, else {defaults.version})",
    )
    p.add_argument("--split", choices=["train", "val"], default=defaults.split)
    p.add_argument(
        "--split-file", default="", help="file listing scene names / sequences / log ids, one a line"
    )
    p.add_argument("--limit", type=int, default=10, help="samples to read (0 = all)")
    return p


def detect_version(root: str, fallback: str) -> str:
    """The single v1.0-* table folder of a nuScenes root, else `fallback`."""
    found = sorted(p.name for p in Path(root).glob("v1.0-*") if (p / "sample.json").is_file())
    return found[0] if len(found) == 1 else fallback


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    version = args.version or detect_version(args.root, SourceConfig().version)
    cfg = SourceConfig(
        name=args.source, root=args.root, version=version, split=args.split, split_file=args.split_file
    )
    try:
        source = build_source(cfg)
    except DatasetLayoutError as exc:
        print(f"hvdistill inspect: {exc}", file=sys.stderr)
        return 2
    report = inspect_source(source, args.limit)
    print(format_report(report))
    return 1 if report.errors else 0
