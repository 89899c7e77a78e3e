"""The sweep report from MLflow alone: mIoU mean +- std per label fraction and checkpoint, plot, class IoU.

    hvdistill report SWEEP_RUN [--tracking-uri URI] [--out DIR]
    hvdistill report --study STUDY_DIR     (the study's tables: hvdistill/eval/study_report.py)

SWEEP_RUN is the parent run id of a sweep (with --tracking-uri), or a sweep directory (its
`sweep.json` names both). The trials are the parent's FINISHED child runs that carry the tag
`hvdistill.sweep.trial` and logged `val/miou` (a re-run trial counts once: its newest finished
run). Each child's tags give its checkpoint, label fraction, seed and learning rates; its metrics
`val/miou` the score and `val/classes_in_mean` how many classes it averages; its `metrics.json`
artifact the per-class IoU. Files written into DIR and logged to the parent run as artifacts
under `report/`, without changing the parent's status (a FAILED sweep stays FAILED):
    summary.md / summary.csv         mIoU mean +- std (sample std over seeds, 0 for one seed) per
                                     checkpoint (and learning rates) and label fraction, with the
                                     number of classes averaged (a range when seeds differ)
    label_efficiency.png             mIoU vs label fraction, log x, one line per checkpoint, std bars
    per_class_iou.md / .csv          per class: IoU mean over seeds per checkpoint and fraction
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hvdistill.tracking import Tracker

TRIAL_TAG = (
    "hvdistill.sweep.trial"  # the trial key: the same (checkpoint, fraction, seed, lrs) -> the same key
)
TAG_PREFIX = "hvdistill.sweep."  # + checkpoint, label, label_fraction, seed, lr_trunk, lr_head
SWEEP_FILE = "sweep.json"  # in a sweep directory: {"parent_run_id", "uri", ...}
METRIC = "val/miou"
CLASSES_METRIC = "val/classes_in_mean"
REPORT_ARTIFACTS = "report"
FILES = {
    "summary_md": "summary.md",
    "summary_csv": "summary.csv",
    "plot": "label_efficiency.png",
    "per_class_md": "per_class_iou.md",
    "per_class_csv": "per_class_iou.csv",
}


@dataclass
class Trial:
    """One finished trial as the report reads it back."""

    key: str
    series: str  # the plot line / table group: checkpoint label (+ learning rates when swept)
    fraction: float
    seed: int
    miou: float
    per_class: dict[str, float | None] = field(default_factory=dict)
    classes: int | None = None  # classes averaged into the mIoU (None: a run from before it was logged)


@dataclass
class Cell:
    """mIoU over the seeds of one (series, fraction)."""

    series: str
    fraction: float
    mean: float
    std: float
    seeds: list[int]
    classes: list[int] = field(default_factory=list)  # classes averaged, per seed where known


def series_name(tags: dict[str, str], lr_swept: bool) -> str:
    label = tags.get(TAG_PREFIX + "label", "?")
    if not lr_swept:
        return label
    return f"{label} (lr {tags.get(TAG_PREFIX + 'lr_trunk')}/{tags.get(TAG_PREFIX + 'lr_head')})"


def read_trials(uri: str, parent_run_id: str, *, per_class: bool = True) -> list[Trial]:
    """The parent's finished trials, newest run per trial key, with their per-class IoU."""
    from hvdistill.tracking import child_runs, download_artifact

    newest: dict[str, dict[str, Any]] = {}
    for run in child_runs(uri, parent_run_id):  # oldest first: later ones replace
        if run["status"] == "FINISHED" and TRIAL_TAG in run["tags"] and METRIC in run["metrics"]:
            newest[run["tags"][TRIAL_TAG]] = run
    lrs = {
        (r["tags"].get(TAG_PREFIX + "lr_trunk"), r["tags"].get(TAG_PREFIX + "lr_head"))
        for r in newest.values()
    }
    trials = []
    for key, run in newest.items():
        tags = run["tags"]
        classes: dict[str, float | None] = {}
        if per_class:
            with tempfile.TemporaryDirectory(prefix="hvdistill-report-") as tmp:
                try:
                    path = download_artifact(uri, run["run_id"], "metrics.json", Path(tmp))
                    classes = json.loads(path.read_text()).get("per_class_iou", {})
                except Exception as exc:  # noqa: BLE001  a child without the artifact still counts
                    print(
                        f"report: run {run['run_id']}: no per-class IoU ({type(exc).__name__})",
                        file=sys.stderr,
                    )
        trials.append(
            Trial(
                key=key,
                series=series_name(tags, len(lrs) > 1),
                fraction=float(tags[TAG_PREFIX + "label_fraction"]),
                seed=int(tags[TAG_PREFIX + "seed"]),
                miou=float(run["metrics"][METRIC]),
                per_class=classes,
                classes=int(run["metrics"][CLASSES_METRIC]) if CLASSES_METRIC in run["metrics"] else None,
            )
        )
    return sorted(trials, key=lambda t: (t.series, t.fraction, t.seed))


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(trials: list[Trial]) -> list[Cell]:
    """mIoU mean and sample std over seeds per (series, fraction), in series then fraction order."""
    groups: dict[tuple[str, float], list[Trial]] = defaultdict(list)
    for t in trials:
        groups[(t.series, t.fraction)].append(t)
    return [
        Cell(
            s,
            f,
            statistics.fmean([t.miou for t in g]),
            _std([t.miou for t in g]),
            sorted(t.seed for t in g),
            sorted({t.classes for t in g if t.classes is not None}),
        )
        for (s, f), g in sorted(groups.items())
    ]


def classes_text(classes: list[int]) -> str:
    """ "16", "15-16" when the seeds' evaluations differ, "" when unknown."""
    if not classes:
        return ""
    return str(classes[0]) if len(classes) == 1 else f"{classes[0]}-{classes[-1]}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


def summary_markdown(cells: list[Cell]) -> str:
    """Rows = checkpoints, columns = label fractions, entries `mean +- std` mIoU in % (n seeds)."""
    fractions = sorted({c.fraction for c in cells})
    series = sorted({c.series for c in cells})
    at = {(c.series, c.fraction): c for c in cells}
    head = "| checkpoint | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |"
    lines = [head, "|" + "---|" * (len(fractions) + 1)]
    for s in series:
        row = []
        for f in fractions:
            c = at.get((s, f))
            classes = f", {classes_text(c.classes)} classes" if c and c.classes else ""
            row.append(f"{_pct(c.mean)} +- {_pct(c.std)} (n={len(c.seeds)}{classes})" if c else "")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    head = "mIoU (%) mean +- std over seeds, per label fraction (classes: how many the mIoU averages)"
    return head + "\n\n" + "\n".join(lines) + "\n"


def per_class_rows(trials: list[Trial]) -> tuple[list[str], list[tuple[str, float, dict[str, float]]]]:
    """(class names, [(series, fraction, {class: mean IoU over seeds where defined})])."""
    names: list[str] = []
    groups: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        for name, v in t.per_class.items():
            if name not in names:
                names.append(name)
            if v is not None:
                groups[(t.series, t.fraction)][name].append(v)
    rows = [(s, f, {n: statistics.fmean(v) for n, v in g.items()}) for (s, f), g in sorted(groups.items())]
    return names, rows


def plot(cells: list[Cell], path: Path) -> Path:
    """mIoU (%) vs label fraction (%), log x, one line per series, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s in sorted({c.series for c in cells}):
        mine = sorted((c for c in cells if c.series == s), key=lambda c: c.fraction)
        x = [100 * c.fraction for c in mine]
        ax.errorbar(
            x, [100 * c.mean for c in mine], yerr=[100 * c.std for c in mine], marker="o", capsize=3, label=s
        )
    ax.set_xscale("log")
    ax.set_xlabel("label fraction (%)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("label efficiency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(trials: list[Trial], out: Path) -> dict[str, Path]:
    """The five files into `out`; {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    cells = summarize(trials)
    paths["summary_md"].write_text(summary_markdown(cells))
    with open(paths["summary_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "label_fraction", "miou_mean", "miou_std", "n", "seeds", "classes_in_mean"])
        for c in cells:
            w.writerow(
                [
                    c.series,
                    f"{c.fraction:g}",
                    f"{c.mean:.6f}",
                    f"{c.std:.6f}",
                    len(c.seeds),
                    " ".join(map(str, c.seeds)),
                    classes_text(c.classes),
                ]
            )
    names, rows = per_class_rows(trials)
    with open(paths["per_class_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "label_fraction", *names])
        for s, fr, iou in rows:
            w.writerow([s, f"{fr:g}", *(f"{iou[n]:.6f}" if n in iou else "" for n in names)])
    md = ["| checkpoint | fraction | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    md += [
        f"| {s} | {100 * fr:g}% | " + " | ".join(_pct(iou[n]) if n in iou else "" for n in names) + " |"
        for s, fr, iou in rows
    ]
    paths["per_class_md"].write_text("per-class IoU (%) mean over seeds\n\n" + "\n".join(md) + "\n")
    plot(cells, paths["plot"])
    return paths


def report(uri: str, parent_run_id: str, out: Path, tracker: Tracker | None = None) -> dict[str, Path]:
    """Read the sweep back from MLflow, write the files, log them to the parent run (through
    `tracker` when the caller holds the parent open, else by reopening it), return their paths."""
    trials = read_trials(uri, parent_run_id)
    if not trials:
        raise ValueError(
            f"sweep run {parent_run_id} in {uri} has no finished trials (child runs tagged {TRIAL_TAG})"
        )
    paths = write_report(trials, Path(out))
    if tracker is None:  # the parent is not ours to reopen: add the files, keep its status
        from hvdistill.tracking import log_files

        log_files(uri, parent_run_id, list(paths.values()), REPORT_ARTIFACTS)
    else:
        _log(tracker, paths)
    return paths


def _log(tracker: Tracker, paths: dict[str, Path]) -> None:
    for path in paths.values():
        tracker.log_artifact(path, REPORT_ARTIFACTS)


def resolve(sweep_run: str, uri: str | None) -> tuple[str, str]:
    """(tracking uri, parent run id) from a sweep directory or a run id (+ uri)."""
    path = Path(sweep_run)
    if (path / SWEEP_FILE).is_file():
        try:
            info = json.loads((path / SWEEP_FILE).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{path / SWEEP_FILE}: unreadable ({exc}); give the parent run id instead"
            ) from None
        if not isinstance(info, dict) or not isinstance(info.get("parent_run_id"), str):
            raise ValueError(f"{path / SWEEP_FILE}: not a sweep record; give the parent run id instead")
        return uri or str(info.get("uri", "")), info["parent_run_id"]
    if not uri:
        raise ValueError(
            f"{sweep_run}: not a sweep directory (no {SWEEP_FILE}); give a run id with --tracking-uri"
        )
    return uri, sweep_run


def print_paths(paths: dict[str, Path], prefix: str = "report") -> None:
    print(paths["summary_md"].read_text())
    for name, path in paths.items():
        print(f"{prefix}: {name} {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="hvdistill report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep_run", nargs="?", help="a sweep directory, or the sweep's parent MLflow run id")
    p.add_argument(
        "--study", default=None, help="a study's directory (<out>/<teacher>) or its study.json: its tables"
    )
    p.add_argument("--tracking-uri", default=None, help="the MLflow store (default: the sweep directory's)")
    p.add_argument(
        "--out", default=None, help="where the files go (default: <sweep dir>/report or ./report-<id>)"
    )
    args = p.parse_args(argv)
    if args.study:
        return _study_report(Path(args.study), args.out)
    if not args.sweep_run:
        p.error("give a sweep directory or run id, or --study DIR")
    try:
        uri, run_id = resolve(args.sweep_run, args.tracking_uri)
        default = (
            Path(args.sweep_run) / REPORT_ARTIFACTS
            if Path(args.sweep_run).is_dir()
            else Path(f"report-{run_id}")
        )
        paths = report(uri, run_id, Path(args.out) if args.out else default)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"hvdistill report: {exc}", file=sys.stderr)
        return 2
    print_paths(paths)
    return 0


def _study_report(path: Path, out: str | None) -> int:
    """Print the study's tables from its MLflow stores; also write them to --out when given."""
    from hvdistill.eval.study_report import study_markdown

    try:
        plot = Path(out).with_suffix(".png") if out else None
        text = study_markdown(path, plot=plot)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"hvdistill report: {exc}", file=sys.stderr)
        return 2
    print(text)
    if out:
        from hvdistill.storage import write_atomic

        write_atomic(Path(out), text)
        print(f"report: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
