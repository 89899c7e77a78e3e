"""`hvdistill study CONFIG [key=value ...] [--out DIR] [--address ADDR]`: the label-efficiency study.

Does pretraining help, and what does each part of the method contribute? On the synthetic world,
every stage through the system's own commands and on one Ray session (docs/results.md):

  1. world     `hvdistill synth` with the renderer's class maps (the teacher's labels)
  2. shards    `hvdistill shard` of every data.sources entry
  3. teacher   `hvdistill teacher train`: the image network distilled from (docs/teacher.md)
  4. pretrain  one Ray Train run per `study.variants` entry, all from that teacher:
               full (IPV + depth + BEV), ipv_depth (no BEV), ipv (SLidR-like: IPV only)
  5. finetune  a sweep (Ray Tune): random init and each pretrained backbone x
               `sweep.label_fractions` x `sweep.seeds`
  6. probe     a sweep of linear probes (frozen backbone) at `study.probe_fractions` x seeds
  7. summary   `<out>/study.md` and `study.json` (`study-<tag>.*` with `study.tag`): one table
               (mIoU mean +- std per method and setting), the plots, the teacher's score, each
               pretraining's last losses, the MLflow run ids and the wall time of every stage

Re-running with the same `--out` resumes: the world, the teacher and finished pretraining runs
are kept (an interrupted pretraining resumes from its last checkpoint), sharding skips finished
units, and each sweep runs only its missing trials. `study.tag` runs a second set of sweeps
(say, longer fine-tuning) on the same world, teacher and pretrainings: `finetune-<tag>`,
`probe-<tag>`, `study-<tag>.md`; a sweep resumed with other fine-tuning settings is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hvdistill import storage
from hvdistill.config import RUN_SECTIONS, Config, ConfigError, load_config
from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.config.study import VARIANTS

RUN_PREFIX = "study-"  # pretraining run names: study-full, study-ipv_depth, study-ipv
FINETUNE_SWEEP, PROBE_SWEEP, SUMMARY = "finetune", "probe", "study"


def tagged(name: str, tag: str) -> str:
    """finetune / probe / study, or finetune-<tag> ... for `study.tag`."""
    return f"{name}-{tag}" if tag else name


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SystemExit(f"hvdistill study: {what} failed (exit {rc})")


def study_overrides(cfg: Config, out: Path) -> list[str]:
    """Everything the study writes lives under `out`: the world, shards, teacher, runs, sweeps."""
    roots = [f"data.sources.{i}.root={out / 'world'}" for i in range(len(cfg.data.sources))]
    teacher = out / "teacher" / "teacher.pt"
    return [
        *roots,
        f"data.shards=[{out / 'shards'}]",
        f"teacher_train.output={teacher}",
        f"model.image.weights={teacher}",
        "model.image.weights_format=torchvision",
        "model.image.random_init=false",
        f"train.output_dir={out / 'runs'}",
        f"finetune.output_dir={out / 'sweeps'}",
        "sweep.after_pretrain=false",
    ]


def make_world(cfg: Config, config_path: str, overrides: list[str], out: Path) -> None:
    """Stage 1, skipped when the world is already written (its synth.json exists)."""
    from hvdistill.cli import main as hvdistill

    src = cfg.data.sources[0]
    if (Path(src.root) / "synth.json").is_file():
        print(f"study: world {src.root} exists; kept")
        return
    cmd = ["synth", "--format", src.name, "--out", src.root, "--no-progress", "--config", config_path]
    if src.name == "nuscenes":
        cmd += ["--version", src.version]
    if cfg.study.world_side_outputs:
        cmd.append("--side-outputs")
    _check(hvdistill([*cmd, *overrides]), "synth")


def make_shards(config_path: str, overrides: list[str], out: Path, workers: int) -> None:
    """Stage 2 (sharding itself skips the units already converted)."""
    from hvdistill.cli import main as hvdistill

    cmd = ["shard", "--out", str(out / "shards"), "--workers", str(workers), "--no-progress"]
    _check(hvdistill([*cmd, "--config", config_path, *overrides]), "shard")


def make_teacher(config_path: str, overrides: list[str], cfg: Config) -> dict[str, Any]:
    """Stage 3, skipped when the teacher and its JSON exist; returns that JSON."""
    from hvdistill.teacher.cli import main as teacher_main

    weights = Path(cfg.teacher_train.output)
    info = weights.with_suffix(".json")
    if not (weights.is_file() and info.is_file()):
        _check(teacher_main(["train", config_path, *overrides]), "teacher train")
    else:
        print(f"study: teacher {weights} exists; kept")
    return json.loads(info.read_text())


def variant_config(cfg: Config, variant: str) -> Config:
    """The pretraining config of one variant: the loss terms it drops get weight 0 (not built)."""
    keep = VARIANTS[variant]
    loss = replace(
        cfg.loss,
        weight_depth=cfg.loss.weight_depth if "depth" in keep else 0.0,
        weight_bev=cfg.loss.weight_bev if "bev" in keep else 0.0,
    )
    return replace(cfg, loss=loss, train=replace(cfg.train, run_name=RUN_PREFIX + variant))


def finished_pretraining(summary: Path) -> dict[str, Any] | None:
    """The summary of a variant's earlier pretraining when its backbone is still in the run's
    storage; None (pretrain again, which resumes) when the summary is missing or damaged or the
    backbone is gone."""
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
        backbone = storage.Location(info["storage"]) / "backbone.pt"
        return info if isinstance(info, dict) and backbone.is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if summary.exists():
            print(f"study: {summary} unusable ({exc}); pretraining again")
        return None


def pretrain_variant(cfg: Config, variant: str, address: str | None) -> dict[str, Any]:
    """Stage 4 for one variant, skipped when its backbone is in the run's storage; its run's
    storage (where the sweeps read the backbone from: no shared disk needed), run dir and metrics."""
    from launch.train import train_on_ray

    vcfg = variant_config(cfg, variant)
    summary = Path(cfg.train.output_dir) / vcfg.train.run_name / "study-pretrain.json"
    kept = finished_pretraining(summary)
    if kept is not None:
        print(f"study: pretraining {variant} done before ({kept['storage']}); kept")
        return kept
    print(f"\n=== study: pretrain {variant} (loss terms {'+'.join(VARIANTS[variant])}) ===", flush=True)
    result = train_on_ray(vcfg, address)
    info = {
        "variant": variant,
        "storage": result.storage,
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "metrics": result.metrics,
        "mlflow_run_id": result.tracking_run_id,
        "mlflow_uri": result.tracking_uri,
    }
    storage.write_atomic(summary, json.dumps(info, indent=1) + "\n")  # a re-run skips this variant by it
    return info


def sweep_config(cfg: Config, name: str, checkpoints: list[str], probe: bool) -> Config:
    """Stage 5 (fine-tuning) or 6 (linear probing) as a sweep of the given checkpoints."""
    ft, sw = cfg.finetune, cfg.sweep
    if probe:
        steps = cfg.study.probe_max_steps or ft.max_steps
        ft = replace(ft, linear_probe=True, max_steps=steps)
        sw = replace(sw, label_fractions=list(cfg.study.probe_fractions))
    return replace(cfg, finetune=ft, sweep=replace(sw, name=name, checkpoints=checkpoints))


def read_summary_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _label(checkpoint: str) -> str:
    return checkpoint.removeprefix(RUN_PREFIX)


def study_table(finetune_rows: list[dict[str, str]], probe_rows: list[dict[str, str]]) -> str:
    """Markdown: rows = methods, columns = fine-tuning fractions then linear-probe fractions."""
    cols: list[tuple[str, str, list[dict[str, str]]]] = []
    for kind, rows in (("fine-tune", finetune_rows), ("linear probe", probe_rows)):
        for frac in sorted({r["label_fraction"] for r in rows}, key=float):
            cols.append((kind, frac, rows))
    methods = list(dict.fromkeys(r["checkpoint"] for r in finetune_rows + probe_rows))
    methods.sort(key=lambda m: (m != RANDOM_INIT, m))
    head = "| method | " + " | ".join(f"{k} {100 * float(f):g}%" for k, f, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for m in methods:
        cells = []
        for _, frac, rows in cols:
            hit = [r for r in rows if r["checkpoint"] == m and r["label_fraction"] == frac]
            if hit:
                r = hit[0]
                classes = f", {r['classes_in_mean']} classes" if r.get("classes_in_mean") else ""
                mean, std = 100 * float(r["miou_mean"]), 100 * float(r["miou_std"])
                cells.append(f"{mean:.2f} +- {std:.2f} (n={r['n']}{classes})")
            else:
                cells.append("")
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, facts: dict[str, Any], ft: Any, probe: Any, name: str = SUMMARY) -> Path:
    """`<out>/<name>.md` and `<out>/<name>.json` from the stages' results."""
    ft_rows = read_summary_csv(ft.paths["summary_csv"])
    probe_rows = read_summary_csv(probe.paths["summary_csv"]) if probe else []
    table = study_table(ft_rows, probe_rows)
    facts |= {"table_md": table, "finetune_rows": ft_rows, "probe_rows": probe_rows}
    for kind, result in (("finetune", ft), ("probe", probe)):
        if result is not None:
            facts[f"{kind}_sweep"] = {
                "dir": str(result.sweep_dir),
                "mlflow_parent_run_id": result.parent_run_id,
                "mlflow_uri": result.uri,
                "plot": str(result.paths.get("plot", "")),
                "per_class_md": str(result.paths.get("per_class_md", "")),
            }
    storage.write_atomic(out / f"{name}.json", json.dumps(facts, indent=1, default=str) + "\n")
    lines = ["# Study summary", "", "mIoU (%) mean +- std over seeds", "", table]
    t = facts["teacher"].get("val", {})
    lines.append(
        f"teacher: val pixel mIoU {t.get('miou', float('nan')):.3f}, accuracy {t.get('accuracy', 0):.3f}"
    )
    for v in facts["pretraining"]:
        m = v["metrics"]
        last = {k: round(float(m[k]), 4) for k in sorted(m) if k.startswith(("loss/", "val/loss/"))}
        lines.append(
            f"pretraining {v['variant']}: {v['steps']} steps, {last}, MLflow run {v['mlflow_run_id']}"
        )
    for key in ("finetune_sweep", "probe_sweep"):
        if key in facts:
            s = facts[key]
            lines.append(f"{key}: {s['dir']} (MLflow parent {s['mlflow_parent_run_id']}), plot {s['plot']}")
    lines.append(f"stage wall times (s): {facts['seconds']}")
    path = out / f"{name}.md"
    storage.write_atomic(path, "\n".join(lines) + "\n")
    return path


def run_study(cfg: Config, config_path: str, overrides: list[str], out: Path, args: Any) -> Path:
    """Stages 1-7 on the Ray session the caller holds; the path of study.md."""
    from launch.sweep import finish, run_sweep

    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any, *a: Any) -> Any:
        print(f"\n=== study: {name} ===", flush=True)
        t = time.perf_counter()
        value = fn(*a)
        seconds[name] = round(time.perf_counter() - t, 1)
        return value

    timed("world", make_world, cfg, config_path, overrides, out)
    timed("shards", make_shards, config_path, overrides, out, args.workers)
    teacher = timed("teacher", make_teacher, config_path, overrides, cfg)
    runs = [timed(f"pretrain {v}", pretrain_variant, cfg, v, args.address) for v in cfg.study.variants]
    checkpoints = [RANDOM_INIT, *(r["storage"] for r in runs)]  # backbones in the runs' storage
    tag = cfg.study.tag
    ft_cfg = sweep_config(cfg, tagged(FINETUNE_SWEEP, tag), checkpoints, False)
    ft = timed("finetune sweep", run_sweep, ft_cfg, args.address)
    probe = None
    if cfg.study.probe_fractions:
        probe_cfg = sweep_config(cfg, tagged(PROBE_SWEEP, tag), checkpoints, True)
        probe = timed("probe sweep", run_sweep, probe_cfg, args.address)
    for result in (ft, probe):
        if result is not None and finish(result) != 0:
            raise SystemExit("hvdistill study: sweep trials failed; re-run the same command to retry them")
    facts = {"teacher": teacher, "pretraining": runs, "seconds": seconds, "out": str(out)}
    return write_summary(out, facts, ft, probe, tagged(SUMMARY, tag))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="the study's YAML, e.g. configs/study.yaml (CPU) or configs/study-gpu.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sweep.seeds=[0]")
    p.add_argument(
        "--out", default="study-output", help="everything the study writes (default study-output/)"
    )
    p.add_argument("--workers", type=int, default=2, help="Ray workers for sharding")
    p.add_argument("--address", default=None, help="an existing Ray cluster; default: one local Ray")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # options before or after the key=value overrides
    out = Path(args.out).absolute()
    for d in [out, *out.parents]:
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"--out: {d} is a file, not a directory; give another --out")
    try:
        base = load_config(args.config, args.overrides, sections=())
        overrides = [*study_overrides(base, out), *args.overrides]
        cfg = load_config(args.config, overrides, sections=RUN_SECTIONS["study"])
    except ConfigError as exc:
        print(f"hvdistill study: {exc}", file=sys.stderr)
        return 2
    from launch.local_ray import ray_session
    from launch.train import session_resources

    sw = cfg.sweep
    cpus = max(args.workers, session_resources(cfg)["num_cpus"], round(sw.max_concurrent * sw.cpus_per_trial))
    start = time.perf_counter()
    with ray_session(args.address, num_cpus=cpus, num_gpus=session_resources(cfg)["num_gpus"]):
        path = run_study(cfg, args.config, overrides, out, args)
    print(f"\n{path.read_text()}")
    print(f"hvdistill study: done in {time.perf_counter() - start:.0f} s; summary {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
