"""`hvdistill study CONFIG [key=value ...] [--out DIR] [--address ADDR] [--stop-after STAGE]`.

Does pretraining help, and what does each part of the method contribute? On the synthetic world,
every stage through the system's own commands and on one Ray session (docs/results.md):

  1. world     `hvdistill synth` with the renderer's side outputs (the teachers' targets)
  2. shards    `hvdistill shard` of every data.sources entry
  3. teacher   `hvdistill teacher train` with `teacher_train.target=<study.teacher>` (docs/teacher.md)
  4. pretrain  one Ray Train run per `study.variants` entry and `study.pretrain_seeds` seed, all
               from that teacher: full (IPV + depth + BEV), ipv_depth (no BEV), ipv (SLidR-like);
               plus the control `<variant>_random_teacher` for each of `study.random_teacher`: the
               same pretraining from a random, untrained teacher
  5. finetune  per seed s, a sweep (Ray Tune) of random init and every backbone of seed s at
               `sweep.label_fractions`, fine-tuning seed s: the readouts are paired by seed
  6. probe     per seed s, a sweep of frozen-feature probes at `study.probe_fractions`
  7. summary   `<out>/<teacher>/study.md` and `study.json` (`study-<tag>.*` with `study.tag`):
               the paired-difference tables (hvdistill/eval/study_report.py; `hvdistill report
               --study DIR` rebuilds them from MLflow), the teacher's score, each pretraining's
               losses, the MLflow run ids and the wall time of every stage

The world and shards live in `<out>/world` and `<out>/shards`; everything that depends on the
teacher in `<out>/<study.teacher>/` (teacher, runs, sweeps), so both teachers can share a world.
Re-running with the same `--out` resumes: the world, the teacher and finished pretraining runs
are kept (an interrupted pretraining resumes from its last checkpoint), sharding skips finished
units, and each sweep runs only its missing trials. `--stop-after pretrain` ends after stage 4
(say, to read out later with other settings). `study.tag` runs a second set of readouts on the
same pretrainings: `finetune-<tag>-s<seed>`, `study-<tag>.md`; a sweep resumed with other
fine-tuning settings is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hvdistill import storage
from hvdistill.config import RUN_SECTIONS, Config, ConfigError, load_config
from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.config.study import RANDOM_TEACHER_SUFFIX, VARIANTS
from hvdistill.config.teacher import saved_format

RUN_PREFIX = "study-"  # pretraining run names: study-<method>-s<seed>
FINETUNE_SWEEP, PROBE_SWEEP, SUMMARY = "finetune", "probe", "study"
STAGES = ("world", "shards", "teacher", "pretrain", "readout")


def tagged(name: str, tag: str) -> str:
    """finetune / probe / study, or finetune-<tag> ... for `study.tag`."""
    return f"{name}-{tag}" if tag else name


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SystemExit(f"hvdistill study: {what} failed (exit {rc})")


def teacher_dir(cfg: Config, out: Path) -> Path:
    """Where everything that depends on the study's teacher lives: <out>/<study.teacher>."""
    return out / cfg.study.teacher


def study_overrides(cfg: Config, out: Path) -> list[str]:
    """Everything the study writes lives under `out`: the world, shards, teacher, runs, sweeps."""
    roots = [f"data.sources.{i}.root={out / 'world'}" for i in range(len(cfg.data.sources))]
    own = teacher_dir(cfg, out)
    teacher = own / "teacher" / "teacher.pt"
    return [
        *roots,
        f"data.shards=[{out / 'shards'}]",
        f"teacher_train.output={teacher}",
        f"model.image.weights={teacher}",
        f"model.image.weights_format={saved_format(cfg.model.image.arch)}",  # torchvision; a ViT: dinov2
        "model.image.random_init=false",
        f"train.output_dir={own / 'runs'}",
        f"finetune.output_dir={own / 'sweeps'}",
        "sweep.after_pretrain=false",
        f"teacher_train.target={cfg.study.teacher}",
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
    kept = json.loads(info.read_text())
    _refuse_another_arch(kept.get("arch"), cfg, weights)
    return kept


def _refuse_another_arch(kept: str | None, cfg: Config, weights: Path) -> None:
    """Stop when the kept teacher is not of `model.image.arch`: the runs beside it are its own."""
    wanted = cfg.model.image.arch
    if kept is None:  # teacher files written before ViT teachers name no arch: all are ResNets
        same = saved_format(wanted) == saved_format("resnet18")
    else:
        same = kept == wanted
    if not same:
        raise SystemExit(
            f"hvdistill study: {weights} is a {kept or 'ResNet'} teacher, and model.image.arch is {wanted}; "
            f"the pretraining runs beside it are that teacher's too: give another --out"
        )


def methods(cfg: Config) -> list[str]:
    """The pretrained methods: every variant, then the random-teacher controls."""
    return [*cfg.study.variants, *(v + RANDOM_TEACHER_SUFFIX for v in cfg.study.random_teacher)]


def method_config(cfg: Config, method: str, seed: int) -> Config:
    """The pretraining config of one method and seed: the loss terms the variant drops get weight 0
    (not built); a random-teacher control swaps the trained teacher for a random one (seeded)."""
    variant = method.removesuffix(RANDOM_TEACHER_SUFFIX)
    keep = VARIANTS[variant]
    loss = replace(
        cfg.loss,
        weight_depth=cfg.loss.weight_depth if "depth" in keep else 0.0,
        weight_bev=cfg.loss.weight_bev if "bev" in keep else 0.0,
    )
    image = cfg.model.image
    if method != variant:
        image = replace(image, weights="", random_init=True, random_init_seed=seed)
    train = replace(cfg.train, run_name=f"{RUN_PREFIX}{method}-s{seed}", seed=seed)
    return replace(cfg, loss=loss, train=train, model=replace(cfg.model, image=image))


def finished_pretraining(summary: Path) -> dict[str, Any] | None:
    """The summary of an earlier pretraining when its backbone is still in the run's storage;
    None (pretrain again, which resumes) when the summary is missing or damaged or the backbone
    is gone."""
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
        backbone = storage.Location(info["storage"]) / "backbone.pt"
        return info if isinstance(info, dict) and backbone.is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if summary.exists():
            print(f"study: {summary} unusable ({exc}); pretraining again")
        return None


def pretrain_method(cfg: Config, method: str, seed: int, address: str | None) -> dict[str, Any]:
    """Stage 4 for one method and seed, skipped when its backbone is in the run's storage; its
    run's storage (where the sweeps read the backbone from: no shared disk needed), run dir and
    metrics."""
    from launch.train import train_on_ray

    mcfg = method_config(cfg, method, seed)
    summary = Path(cfg.train.output_dir) / mcfg.train.run_name / "study-pretrain.json"
    kept = finished_pretraining(summary)
    if kept is not None:
        print(f"study: pretraining {method} seed {seed} done before ({kept['storage']}); kept")
        return kept
    print(f"\n=== study: pretrain {method} seed {seed} ===", flush=True)
    result = train_on_ray(mcfg, address)
    info = {
        "method": method,
        "seed": seed,
        "storage": result.storage,
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "metrics": result.metrics,
        "mlflow_run_id": result.tracking_run_id,
        "mlflow_uri": result.tracking_uri,
    }
    storage.write_atomic(summary, json.dumps(info, indent=1) + "\n")  # a re-run skips this run by it
    return info


def sweep_config(cfg: Config, name: str, checkpoints: list[str], seed: int, probe: bool) -> Config:
    """Stage 5 (fine-tuning) or 6 (frozen-feature probe) of one seed as a sweep of its checkpoints."""
    ft, sw = cfg.finetune, cfg.sweep
    if probe:
        ft = replace(ft, frozen_probe=True, linear_probe=False)
        sw = replace(sw, label_fractions=list(cfg.study.probe_fractions))
    sw = replace(sw, name=name, checkpoints=checkpoints, seeds=[seed])
    return replace(cfg, finetune=ft, sweep=sw)


def readouts(
    cfg: Config, runs: list[dict[str, Any]], address: str | None, timed: Any
) -> list[dict[str, Any]]:
    """Stages 5-6: per pretraining seed, the fine-tuning and probe sweeps of random init and that
    seed's backbones; what the report needs to find each sweep in MLflow."""
    from launch.sweep import finish, run_sweep

    done: list[dict[str, Any]] = []
    kinds = [(FINETUNE_SWEEP, False)] + ([(PROBE_SWEEP, True)] if cfg.study.probe_fractions else [])
    for seed in cfg.study.pretrain_seeds:
        checkpoints = [RANDOM_INIT, *(r["storage"] for r in runs if r["seed"] == seed)]
        for kind, probe in kinds:
            name = f"{tagged(kind, cfg.study.tag)}-s{seed}"
            result = timed(
                f"{kind} seed {seed}", run_sweep, sweep_config(cfg, name, checkpoints, seed, probe), address
            )
            if finish(result) != 0:
                raise SystemExit(
                    "hvdistill study: sweep trials failed; re-run the same command to retry them"
                )
            done.append(
                {"kind": kind, "seed": seed, "dir": str(result.sweep_dir), "uri": result.uri,
                 "mlflow_parent_run_id": result.parent_run_id}
            )  # fmt: skip
    return done


def write_summary(own: Path, facts: dict[str, Any], name: str) -> Path:
    """`<own>/<name>.json` (what the report reads) and `<own>/<name>.md` (the report's tables)."""
    from hvdistill.eval.study_report import study_markdown

    storage.write_atomic(own / f"{name}.json", json.dumps(facts, indent=1, default=str) + "\n")
    path = own / f"{name}.md"
    storage.write_atomic(path, study_markdown(own / f"{name}.json", plot=own / f"{name}-differences.png"))
    return path


def run_study(cfg: Config, config_path: str, overrides: list[str], out: Path, args: Any) -> Path | None:
    """Stages 1-7 on the Ray session the caller holds; the path of study.md (None with --stop-after)."""
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any, *a: Any) -> Any:
        print(f"\n=== study: {name} ===", flush=True)
        t = time.perf_counter()
        value = fn(*a)
        seconds[name] = round(time.perf_counter() - t, 1)
        return value

    stop = STAGES.index(args.stop_after)
    timed("world", make_world, cfg, config_path, overrides, out)
    if stop >= 1:
        timed("shards", make_shards, config_path, overrides, out, args.workers)
    teacher = timed("teacher", make_teacher, config_path, overrides, cfg) if stop >= 2 else None
    if stop < 3:
        return None
    runs = [
        timed(f"pretrain {m} seed {s}", pretrain_method, cfg, m, s, args.address)
        for s in cfg.study.pretrain_seeds
        for m in methods(cfg)
    ]
    if stop < 4:
        return None
    sweeps = readouts(cfg, runs, args.address, timed)
    facts = {
        "teacher": teacher,
        "study_teacher": cfg.study.teacher,
        "methods": methods(cfg),
        "pretrain_seeds": cfg.study.pretrain_seeds,
        "pretraining": runs,
        "sweeps": sweeps,
        "statistics": {
            "confidence": cfg.study.confidence,
            "bootstrap_resamples": cfg.study.bootstrap_resamples,
            "bootstrap_seed": cfg.study.bootstrap_seed,
            "miou_classes": cfg.finetune.miou_classes,
        },
        "seconds": seconds,
        "out": str(out),
    }
    return write_summary(teacher_dir(cfg, out), facts, tagged(SUMMARY, cfg.study.tag))


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
    p.add_argument(
        "--stop-after", choices=STAGES, default=STAGES[-1], help="end after this stage (default: all of them)"
    )
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
    if path is None:
        print(f"hvdistill study: stopped after {args.stop_after} in {time.perf_counter() - start:.0f} s")
        return 0
    print(f"\n{path.read_text()}")
    print(f"hvdistill study: done in {time.perf_counter() - start:.0f} s; summary {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
