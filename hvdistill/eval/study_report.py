"""The study's report from MLflow: mIoU per method and readout, and the paired differences.

    hvdistill report --study <out>/<teacher>[/study.json]

`hvdistill study` writes `study.json` (which sweeps ran, where their MLflow stores are, the
methods and seeds, the statistics settings) and this module turns it into the tables of
docs/results.md, reading every number back from the sweeps' MLflow stores: each trial's tags
(checkpoint label, seed, label fraction), its metrics (`val/miou`, the strata `val/miou_in_view`
..., `val/converged`) and its per-scan confusion matrices (an artifact, for the bootstrap over
held-out scans; hvdistill/eval/paired.py). A readout is one column of the study: fine-tuning at
a label fraction, or the frozen-feature probe's logistic or prototype readout at one.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.config.study import RANDOM_TEACHER_SUFFIX
from hvdistill.eval.paired import Comparison, bootstrap_interval, bootstrap_weights, t_interval
from hvdistill.eval.report import METRIC, TAG_PREFIX, TRIAL_TAG

RANDOM = RANDOM_INIT  # random init's label in the sweeps and the tables
BASELINE = "ipv"  # the image-plane-only variant every other variant is compared with
SUMMARY_FILE = "study.json"
PER_SCAN = "confusion_per_scan"  # <prefix>.npy + <prefix>.json, in the run's artifacts
PROBE_READOUTS = {"logistic": ("val", "logistic"), "prototype": ("val_prototype", "prototype")}
_LABEL = re.compile(r"^study-(?P<method>[A-Za-z0-9_]+)-s(?P<seed>\d+)$")


@dataclass
class Record:
    """One readout of one backbone: a trial's numbers, as read back from MLflow."""

    readout: str
    method: str
    seed: int
    metrics: dict[str, float]  # this readout's flat metrics, prefix removed: miou, miou_in_view, ...
    scans: list[str] = field(default_factory=list)  # held-out scan keys, in the order of `per_scan`
    per_scan: np.ndarray | None = None  # (S, C, C) int64


def load_summary(path: Path) -> dict[str, Any]:
    """study.json (or its directory), checked for the fields the report reads."""
    path = Path(path)
    path = path / SUMMARY_FILE if path.is_dir() else path
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not a readable study summary ({exc}); run `hvdistill study` first"
        ) from None
    sweeps = facts.get("sweeps") if isinstance(facts, dict) else None
    if not isinstance(sweeps, list) or not all(
        isinstance(s, dict)
        and all(isinstance(s.get(k), str) for k in ("kind", "uri", "mlflow_parent_run_id"))
        for s in sweeps
    ):
        raise ValueError(
            f"{path}: no list of sweeps with kind, uri and mlflow_parent_run_id; not a study summary"
        )
    return facts


def method_of(label: str) -> tuple[str, int | None]:
    """(method, seed) of a trial's checkpoint label: random, or study-<method>-s<seed>."""
    if label == RANDOM:
        return RANDOM, None
    m = _LABEL.match(label)
    return (m["method"], int(m["seed"])) if m else (label, None)


def _flat(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """{"miou": .., "miou_in_view": .., ...} from "<prefix>/miou", "<prefix>/miou_in_view", ..."""
    return {k[len(prefix) + 1 :]: float(v) for k, v in metrics.items() if k.startswith(prefix + "/")}


def _per_scan(uri: str, run_id: str, folder: str) -> tuple[list[str], np.ndarray | None]:
    """The run's per-scan confusion artifact under `folder` ("" = the run's root), or ([], None)."""
    from hvdistill.eval.metrics import load_per_scan
    from hvdistill.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="hvdistill-study-report-") as tmp:
        try:
            for suffix in (".npy", ".json"):
                name = f"{folder}/{PER_SCAN}{suffix}" if folder else PER_SCAN + suffix
                download_artifact(uri, run_id, name, Path(tmp) / folder)  # a file lands by its base name
            keys, counts = load_per_scan(Path(tmp) / folder)
        except Exception as exc:  # noqa: BLE001  a trial without the artifact: no bootstrap for it
            print(
                f"report: run {run_id}: no per-scan confusion ({type(exc).__name__}: {exc})", file=sys.stderr
            )
            return [], None
    return list(keys), counts


def read_records(facts: dict[str, Any], per_scan: bool = True) -> list[Record]:
    """Every finished trial of the study's sweeps, one Record per readout it carries."""
    from hvdistill.tracking import child_runs

    records = []
    for sweep in facts["sweeps"]:
        newest: dict[str, dict[str, Any]] = {}
        for run in child_runs(sweep["uri"], sweep["mlflow_parent_run_id"]):  # oldest first
            if run["status"] == "FINISHED" and TRIAL_TAG in run["tags"] and METRIC in run["metrics"]:
                newest[run["tags"][TRIAL_TAG]] = run
        for run in newest.values():
            tags = run["tags"]
            method, label_seed = method_of(tags.get(TAG_PREFIX + "label", "?"))
            seed = int(tags[TAG_PREFIX + "seed"])
            pct = f"{100 * float(tags[TAG_PREFIX + 'label_fraction']):g}%"
            if sweep["kind"] == "probe":
                parts = [
                    (f"probe {pct} {name}", prefix, folder)
                    for name, (prefix, folder) in PROBE_READOUTS.items()
                ]
            else:
                parts = [(f"fine-tune {pct}", "val", "")]
            for readout, prefix, folder in parts:
                keys, counts = _per_scan(sweep["uri"], run["run_id"], folder) if per_scan else ([], None)
                flat = _flat(run["metrics"], prefix)
                if "miou" in flat:
                    records.append(Record(readout, method, seed, flat, keys, counts))
            if label_seed is not None and label_seed != seed:
                print(f"report: trial {tags[TRIAL_TAG]} reads seed {label_seed}'s backbone with seed {seed}")
    return records


def comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """The pairs the study decides, (A, B) for A - B: each variant vs ipv, each method vs random
    init, each variant vs its random-teacher control."""
    pairs = [
        (m, BASELINE)
        for m in methods
        if BASELINE in methods and m != BASELINE and RANDOM_TEACHER_SUFFIX not in m
    ]
    pairs += [(m, RANDOM) for m in methods]
    pairs += [
        (m.removesuffix(RANDOM_TEACHER_SUFFIX), m) for m in methods if m.endswith(RANDOM_TEACHER_SUFFIX)
    ]
    return pairs


def compare(
    by_key: dict[tuple[str, str, int], Record], readout: str, a: str, b: str, metric: str, st: dict[str, Any]
) -> Comparison | None:
    """A - B on `metric` of one readout, paired by seed; the bootstrap only for the overall mIoU."""
    seeds = sorted(
        {s for (r, m, s) in by_key if r == readout and m == a}
        & {s for (r, m, s) in by_key if r == readout and m == b}
    )
    pairs = [(by_key[readout, a, s], by_key[readout, b, s]) for s in seeds]
    pairs = [(x, y) for x, y in pairs if metric in x.metrics and metric in y.metrics]
    if not pairs:
        return None
    diffs = [x.metrics[metric] - y.metrics[metric] for x, y in pairs]
    mean, lo, hi = t_interval(diffs, st["confidence"])
    c = Comparison(readout, a, b, [x.seed for x, _ in pairs], diffs, mean, lo, hi)
    if metric == "miou" and all(x.per_scan is not None and y.per_scan is not None for x, y in pairs):
        keys = pairs[0][0].scans
        if all(x.scans == keys and y.scans == keys for x, y in pairs):
            w = bootstrap_weights(len(keys), st["bootstrap_resamples"], st["bootstrap_seed"])
            c.boot_low, c.boot_high = bootstrap_interval(
                [x.per_scan for x, _ in pairs], [y.per_scan for _, y in pairs], w, st["confidence"],
                class_set=st.get("miou_classes", "ground_truth"),
            )  # fmt: skip
    return c


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:+.2f}"


def _interval(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"[{_pct(lo)}, {_pct(hi)}]"


def readouts_of(records: list[Record]) -> list[str]:
    return sorted({r.readout for r in records}, key=lambda r: (not r.startswith("fine"), r))


def method_table(records: list[Record], methods: list[str], st: dict[str, Any], metric: str = "miou") -> str:
    """Rows = methods, columns = readouts: mean over seeds +- the t half-width (n seeds)."""
    readouts = readouts_of(records)
    lines = ["| method | " + " | ".join(readouts) + " |", "|" + "---|" * (len(readouts) + 1)]
    for m in [RANDOM, *methods]:
        cells = []
        for r in readouts:
            values = [
                x.metrics[metric] for x in records if x.readout == r and x.method == m and metric in x.metrics
            ]
            mean, lo, hi = t_interval(values, st["confidence"])
            half = "" if math.isnan(lo) else f" +- {100 * (hi - mean):.2f}"
            cells.append("" if not values else f"{100 * mean:.2f}{half} (n={len(values)})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference_table(by_key: dict, readout: str, pairs: list[tuple[str, str]], st: dict[str, Any]) -> str:
    """One readout: per comparison the per-seed differences, the mean, both intervals, the verdict."""
    lines = [
        f"**{readout}** (mIoU points, A - B)",
        "",
        "| A - B | per seed | mean | t interval | bootstrap interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        c = compare(by_key, readout, a, b, "miou", st)
        if c is None:
            continue
        seeds = ", ".join(f"{_pct(d)}" for d in c.diffs)
        verdict = {"A > B": f"{a} better", "A < B": f"{b} better"}.get(c.verdict, "not shown")
        lines.append(
            f"| {a} - {b} | {seeds} | {_pct(c.mean)} | {_interval(c.t_low, c.t_high)} | "
            f"{_interval(c.boot_low, c.boot_high)} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def strata_table(
    by_key: dict, readout: str, pairs: list[tuple[str, str]], st: dict[str, Any], strata: list[str]
) -> str:
    """One readout: per comparison, the mean difference and t interval in each stratum."""
    lines = [
        f"**{readout}**, by stratum (mean A - B, t interval over seeds)",
        "",
        "| A - B | " + " | ".join(strata) + " |",
        "|" + "---|" * (len(strata) + 1),
    ]
    for a, b in pairs:
        cells = []
        for s in strata:
            c = compare(by_key, readout, a, b, f"miou_{s}", st)
            cells.append("" if c is None else f"{_pct(c.mean)} {_interval(c.t_low, c.t_high)}")
        if any(cells):
            lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def strata_of(records: list[Record]) -> list[str]:
    names = {k.removeprefix("miou_") for r in records for k in r.metrics if k.startswith("miou_")}
    order = ["in_view", "out_view"]
    return [s for s in order if s in names] + sorted(n for n in names if n not in order)


def convergence_table(records: list[Record], methods: list[str]) -> str:
    """Fine-tuning readouts: how many runs ended converged (held-out loss flat over their last part)."""
    readouts = [r for r in readouts_of(records) if r.startswith("fine")]
    lines = ["| method | " + " | ".join(readouts) + " |", "|" + "---|" * (len(readouts) + 1)]
    for m in [RANDOM, *methods]:
        cells = []
        for r in readouts:
            flags = [x.metrics.get("converged") for x in records if x.readout == r and x.method == m]
            known = [f for f in flags if f is not None and not math.isnan(f)]
            cells.append(f"{sum(f > 0.5 for f in known)} of {len(flags)}" if flags else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def teacher_line(teacher: Any) -> str:
    """The teacher's held-out score, as its <output>.json records it (classes or geometry target)."""
    val = teacher.get("val") if isinstance(teacher, dict) else None
    if not isinstance(val, dict):
        return "teacher: no score recorded"
    if teacher.get("target") == "geometry":
        return (
            f"teacher (class-free, {teacher.get('steps')} steps): depth-bin accuracy "
            f"{val.get('depth_bin_accuracy', math.nan):.3f}, depth abs-rel "
            f"{val.get('depth_abs_rel', math.nan):.3f}, mean normal error "
            f"{val.get('normal_angle_mean_deg', math.nan):.1f} deg"
        )
    return (
        f"teacher (classes, {teacher.get('steps')} steps): held-out pixel mIoU "
        f"{100 * val.get('miou', math.nan):.1f}%, accuracy {100 * val.get('accuracy', math.nan):.1f}%"
    )


def pretraining_table(runs: Any) -> str:
    """Per method: the last logged training and held-out loss terms, mean over its seeds."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in runs if isinstance(runs, list) else []:
        if isinstance(r, dict) and isinstance(r.get("metrics"), dict):
            rows[str(r.get("method"))].append(
                {
                    k: float(v)
                    for k, v in r["metrics"].items()
                    if k.startswith(("loss/", "val/loss/")) and isinstance(v, int | float)
                }
            )
    keys = sorted({k for ms in rows.values() for m in ms for k in m}, key=lambda k: (k.startswith("val"), k))
    lines = ["| method (seeds) | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for method, ms in rows.items():
        cells = [
            f"{np.mean([m[k] for m in ms if k in m]):.3f}" if any(k in m for m in ms) else "-" for k in keys
        ]
        lines.append(f"| {method} ({len(ms)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_differences(
    by_key: dict, readouts: list[str], pairs: list[tuple[str, str]], st: dict[str, Any], path: Path
) -> Path:
    """One panel per readout: each comparison's mean difference (points), its t interval (thick) and
    its bootstrap interval (thin), and the per-seed differences (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(readouts), figsize=(4.2 * len(readouts), 0.5 * len(pairs) + 1.6), sharey=True
    )
    for ax, readout in zip(np.atleast_1d(axes), readouts):
        for y, (a, b) in enumerate(pairs):
            c = compare(by_key, readout, a, b, "miou", st)
            if c is None:
                continue
            ax.plot([100 * c.boot_low, 100 * c.boot_high], [y, y], color="tab:gray", lw=1)
            ax.plot([100 * c.t_low, 100 * c.t_high], [y, y], color="tab:blue", lw=4, alpha=0.5)
            ax.plot([100 * d for d in c.diffs], [y] * len(c.diffs), "k.", ms=4)
            ax.plot([100 * c.mean], [y], "o", color="tab:blue")
        ax.axvline(0, color="tab:red", lw=1)
        ax.set_title(readout, fontsize=9)
        ax.set_xlabel("mIoU difference (points)")
        ax.grid(True, axis="x", alpha=0.3)
    ax0 = np.atleast_1d(axes)[0]
    ax0.set_yticks(range(len(pairs)), [f"{a} - {b}" for a, b in pairs], fontsize=8)
    ax0.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_markdown(summary: Path, records: list[Record] | None = None, plot: Path | None = None) -> str:
    """The whole report as markdown, from study.json and (unless given) the MLflow stores; with
    `plot`, the paired differences drawn there too."""
    facts = load_summary(summary)
    st = {"confidence": 0.95, "bootstrap_resamples": 2000, "bootstrap_seed": 0} | dict(
        facts.get("statistics") or {}
    )
    records = read_records(facts) if records is None else records
    methods = [m for m in facts.get("methods") or sorted({r.method for r in records} - {RANDOM})]
    by_key = {(r.readout, r.method, r.seed): r for r in records}
    pairs = comparisons(methods)
    conf = f"{100 * st['confidence']:g}%"
    out = [
        f"# Study report (teacher: {facts.get('study_teacher', '?')})",
        "",
        f"Pretraining seeds {facts.get('pretrain_seeds')}; readouts paired by seed; intervals at {conf} "
        f"(t over seeds; bootstrap over held-out scans, {st['bootstrap_resamples']} resamples). A "
        "difference is claimed only when both intervals exclude 0.",
        "",
        "## mIoU (%) per method and readout: mean +- t half-width over seeds",
        "",
        method_table(records, methods, st),
        "## Paired differences",
        "",
    ]
    for r in readouts_of(records):
        out += [difference_table(by_key, r, pairs, st), ""]
    strata = strata_of(records)
    if strata:
        out += ["## By stratum (points inside / outside the camera view, by range)", ""]
        for r in readouts_of(records):
            out += [strata_table(by_key, r, pairs, st, strata), ""]
    out += ["## Convergence of the fine-tuning runs", "", convergence_table(records, methods)]
    if plot is not None and records:
        plot_differences(by_key, readouts_of(records), pairs, st, plot)
        out += [f"![paired differences]({plot.name})", ""]
    out += [
        "## Teacher and pretraining (from study.json)",
        "",
        teacher_line(facts.get("teacher")),
        "",
        "Last logged losses of each pretraining, mean over seeds:",
        "",
        pretraining_table(facts.get("pretraining")),
    ]
    grouped: dict[str, list[str]] = defaultdict(list)
    for s in facts["sweeps"]:
        grouped[s["uri"]].append(f"{s['kind']} seed {s.get('seed')}: {s['mlflow_parent_run_id']}")
    out += ["## MLflow", ""] + [f"- {uri}: " + "; ".join(v) for uri, v in grouped.items()]
    return "\n".join(out) + "\n"
