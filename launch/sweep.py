"""Label-efficiency sweeps on Ray Tune: checkpoints x label fractions x seeds (x learning rates), tracked.

    hvdistill sweep CONFIG [key=value ...] [--address ADDR]

The driver (this process) validates the config for fine-tuning plus the `sweep` section, makes
its paths absolute (Tune runs each trial in another working directory), fixes the sweep
directory `<finetune.output_dir>/<sweep.name or generated>` and opens the parent MLflow run
there before any trial starts (store: `tracking.uri`, default `<sweep dir>/mlruns.db`); the
parent's id and store are written to `<sweep dir>/sweep.json`. Each trial is
`hvdistill.eval.run.run(trial config, parent_run_id=...)`, a child run tagged with its trial key
(`hvdistill.sweep.trial`: a hash of the resolved checkpoint, label fraction, seed and learning
rates) and its coordinates; its fine-tuning run directory is `<sweep dir>/trials/<name>`.

Re-running with the same `sweep.name` reopens the same parent run and runs only the trials
without a FINISHED child of that key: an interrupted sweep finishes what is missing, a failed
trial runs again. Trials run `sweep.max_concurrent` at a time, each holding
`sweep.cpus_per_trial` CPUs and `sweep.gpus_per_trial` GPUs of the cluster (a local Ray on
127.0.0.1 is sized to max_concurrent trials). A line is printed per finished trial. At the end
the report (hvdistill/eval/report.py: table, plot, per-class IoU) is written to
`<sweep dir>/report`, logged to the parent run and printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, flatten, from_dict, load_config, to_dict
from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.config.model import lidar_problems
from hvdistill.eval.report import REPORT_ARTIFACTS, SWEEP_FILE, TAG_PREFIX, TRIAL_TAG, print_paths, report
from launch.local_ray import ray_session

SWEEP_SECTIONS = RUN_SECTIONS["sweep"]
TRIALS_DIR = "trials"
RAY_DIR = "ray"
KEY_CHARS = 16  # hex characters of the trial key (sha256 of its coordinates)


@dataclass
class SweepResult:
    """What a sweep leaves: where, the parent run, what ran and the report's files."""

    sweep_dir: Path
    parent_run_id: str
    uri: str
    ran: int
    skipped: int
    failed: list[str] = field(default_factory=list)  # trial names
    paths: dict[str, Path] = field(default_factory=dict)


def load_sweep_config(path: str | None, overrides: list[str]) -> Config:
    """The config of a sweep, validated for what fine-tuning and the sweep read (one ConfigError)."""
    cfg = load_config(path, overrides, sections=SWEEP_SECTIONS)
    problems = lidar_problems(cfg.model.lidar, cfg.geometry)
    if not cfg.tracking.enabled:
        problems.append("tracking.enabled: a sweep records its trials in MLflow; it must be true")
    if problems:
        raise ConfigError(problems)
    return cfg


def _absolute(path: str, base: Path) -> str:
    if (
        not path
        or path == RANDOM_INIT
        or "://" in path
        or path.startswith("runs:/")
        or Path(path).is_absolute()
    ):
        return path
    return str((base / path).resolve())


def prepare_config(cfg: Config, base: Path | None = None) -> Config:
    """Paths absolute against `base` (default: cwd), the sweep's name fixed."""
    base = Path.cwd() if base is None else base
    name = cfg.sweep.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    sweep = replace(cfg.sweep, name=name, checkpoints=[_absolute(c, base) for c in cfg.sweep.checkpoints])
    finetune = replace(cfg.finetune, output_dir=_absolute(cfg.finetune.output_dir, base))
    data = replace(cfg.data, shards=[_absolute(s, base) for s in cfg.data.shards])
    return replace(cfg, sweep=sweep, finetune=finetune, data=data)


def checkpoint_labels(checkpoints: list[str]) -> list[str]:
    """Short names for the table: random, the run directory's name, run-<id>; made unique."""
    labels = []
    for c in checkpoints:
        if c == RANDOM_INIT:
            label = RANDOM_INIT
        elif c.startswith("runs:/"):
            label = "run-" + c.removeprefix("runs:/")[:8]
        else:
            p = Path(c)
            label = p.parent.name if p.suffix == ".pt" else p.name
        labels.append(label if label not in labels else f"{label}#{len(labels)}")
    return labels


def trial_specs(cfg: Config) -> list[dict[str, Any]]:
    """Every trial of a prepared config: key, name, checkpoint, label, fraction, seed, learning rates."""
    sw, ft = cfg.sweep, cfg.finetune
    lr_trunk, lr_head = sw.lr_trunk or [ft.lr_trunk], sw.lr_head or [ft.lr_head]
    lr_swept = len(lr_trunk) * len(lr_head) > 1
    specs = []
    grid = product(
        zip(sw.checkpoints, checkpoint_labels(sw.checkpoints)),
        sw.label_fractions,
        sw.seeds,
        lr_trunk,
        lr_head,
    )
    for (ckpt, label), fraction, seed, lt, lh in grid:
        coords = [ckpt, float(fraction), int(seed), float(lt), float(lh), ft.linear_probe]
        key = hashlib.sha256(json.dumps(coords).encode()).hexdigest()[:KEY_CHARS]
        lr = f"-lr{lt:g}-{lh:g}" if lr_swept else ""
        specs.append(
            {
                "key": key,
                "name": f"{label}-f{fraction:g}-s{seed}{lr}-{key[:8]}",
                "checkpoint": ckpt,
                "label": label,
                "label_fraction": float(fraction),
                "seed": int(seed),
                "lr_trunk": float(lt),
                "lr_head": float(lh),
            }
        )
    return specs


def trial_config(cfg: Config, spec: dict[str, Any], uri: str, sweep_dir: Path) -> Config:
    """The fine-tuning config of one trial: its backbone, fraction, seed, rates; the sweep's store."""
    ft = replace(
        cfg.finetune,
        backbone="" if spec["checkpoint"] == RANDOM_INIT else spec["checkpoint"],
        label_fraction=spec["label_fraction"],
        seed=spec["seed"],
        lr_trunk=spec["lr_trunk"],
        lr_head=spec["lr_head"],
        output_dir=str(sweep_dir / TRIALS_DIR),
        run_name=spec["name"],
    )
    tracking = replace(cfg.tracking, enabled=True, uri=uri, run_name="")
    return replace(cfg, finetune=ft, tracking=tracking)


def trial_tags(spec: dict[str, Any]) -> dict[str, str]:
    tags = {TRIAL_TAG: spec["key"], "hvdistill.kind": "sweep_trial"}
    for k in ("checkpoint", "label", "label_fraction", "seed", "lr_trunk", "lr_head"):
        tags[TAG_PREFIX + k] = str(spec[k])
    return tags


def run_trial(config: dict[str, Any], base: dict[str, Any], parent: str, uri: str, sweep_dir: str) -> None:
    """One Tune trial (in a Ray worker): a fresh run directory, the fine-tuning run, its mIoU reported."""
    from ray import tune

    from hvdistill.eval.run import run

    spec = config["spec"]
    cfg = trial_config(from_dict(base, SWEEP_SECTIONS), spec, uri, Path(sweep_dir))
    threads_for(cfg.sweep.cpus_per_trial)
    shutil.rmtree(Path(cfg.finetune.output_dir) / spec["name"], ignore_errors=True)  # an interrupted try's
    result = run(cfg, parent_run_id=parent, tags=trial_tags(spec))
    tune.report({"miou": float(result.miou), "steps": int(result.steps)})


def threads_for(cpus: float) -> int:
    """Torch intra-op threads = the CPUs Ray reserved for this worker (at least 1). Ray leaves an
    inherited OMP_NUM_THREADS in place, so without this every trial would run as many threads as
    the driver's machine allows and concurrent trials oversubscribe the cores."""
    import torch

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    return n


def _progress_callback(total: int, done: int) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """A line per finished (or failed) trial on the driver."""

        def __init__(self) -> None:
            self.done = done

        def _line(self, trial: Any, text: str) -> None:
            self.done += 1
            print(f"sweep: [{self.done}/{total}] {trial.config['spec']['name']}: {text}", flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            miou = (trial.last_result or {}).get("miou", math.nan)
            self._line(trial, f"mIoU {100 * miou:.2f}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "FAILED (its error is in the Ray log above)")

    return Progress()


# finetune keys that are a trial's coordinates, say where it writes, or change only how fast it runs
NOT_SHARED = (
    *("backbone", "label_fraction", "seed", "lr_trunk", "lr_head", "output_dir", "run_name"),
    *("loader_workers", "eval_batch_size", "log_every", "device"),
)


def trial_settings(cfg: Config) -> dict[str, Any]:
    """What every trial of the sweep shares and a finished trial's result depends on: the
    `finetune` section (less NOT_SHARED), the shards, the voxel size and the LiDAR model, as JSON."""
    flat = {f"finetune.{k}": v for k, v in flatten(cfg.finetune).items() if k not in NOT_SHARED}
    flat.update({f"model.lidar.{k}": v for k, v in flatten(cfg.model.lidar).items()})
    flat.update({"data.shards": list(cfg.data.shards), "geometry.voxel_size": cfg.geometry.voxel_size})
    return json.loads(json.dumps(flat))


def settings_problems(before: Any, now: dict[str, Any], name: str) -> list[str]:
    """A resumed sweep must run its missing trials under the settings its finished ones had;
    otherwise the table would mix them. One line per changed key, with both ways out."""
    if not isinstance(before, dict):
        return []  # a new sweep, or one written before settings were recorded
    keys = sorted(set(before) | set(now))
    return [
        f"{k}: sweep {name!r} ran its trials with {before.get(k)!r}, the config now has {now.get(k)!r}; "
        f"set {k}={json.dumps(before.get(k)).replace(' ', '')} to finish that sweep, or give a new sweep.name"
        for k in keys
        if before.get(k) != now.get(k)
    ]


def read_sweep_file(path: Path) -> dict[str, Any]:
    """sweep.json of an earlier run of this sweep, or {} for a new one; a damaged file is an error
    that names it (it holds the parent run id that resuming needs)."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"{path}: unreadable ({exc}); restore it, or give a new sweep.name"]) from exc
    if not isinstance(info, dict) or not isinstance(info.get("parent_run_id", ""), str):
        raise ConfigError([f"{path}: not a sweep record; restore it, or give a new sweep.name"])
    return info


def open_parent(cfg: Config, sweep_dir: Path) -> tuple[Any, str]:
    """(parent tracker, store uri): the run recorded in sweep.json reopened, else a new one."""
    from hvdistill.tracking import default_tags, prepare_tracking, start_tracker

    sweep_dir.mkdir(parents=True, exist_ok=True)
    info_file = sweep_dir / SWEEP_FILE
    previous = read_sweep_file(info_file)
    settings = trial_settings(cfg)
    changed = settings_problems(previous.get("settings"), settings, cfg.sweep.name)
    if changed:
        raise ConfigError(changed)
    uri = prepare_tracking(cfg.tracking, sweep_dir)
    tracking = replace(cfg.tracking, uri=uri)
    tags = {**default_tags(1), "hvdistill.kind": "sweep"}
    parent = start_tracker(
        tracking, sweep_dir, is_main=True, resume_run_id=previous.get("parent_run_id"),
        run_name=cfg.sweep.name, tags=tags,
    )  # fmt: skip
    info = {"parent_run_id": parent.run_id, "uri": uri, "name": cfg.sweep.name, "settings": settings}
    info_file.write_text(json.dumps(info) + "\n")
    parent.log_params(flatten(cfg, ("finetune", "sweep")))
    return parent, uri


def completed_keys(uri: str, parent_run_id: str) -> set[str]:
    from hvdistill.tracking import child_runs

    return {
        r["tags"][TRIAL_TAG]
        for r in child_runs(uri, parent_run_id)
        if r["status"] == "FINISHED" and TRIAL_TAG in r["tags"]
    }


def _tune(
    cfg: Config, pending: list[dict[str, Any]], parent: str, uri: str, sweep_dir: Path, total: int
) -> list[str]:
    """Run the pending trials on Tune; the names of those that failed."""
    from ray import tune

    sw = cfg.sweep
    trainable = tune.with_parameters(
        run_trial, base=to_dict(cfg), parent=parent, uri=uri, sweep_dir=str(sweep_dir)
    )
    resources = {"cpu": sw.cpus_per_trial, **({"gpu": sw.gpus_per_trial} if sw.gpus_per_trial else {})}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"spec": tune.grid_search(pending)},
        tune_config=tune.TuneConfig(max_concurrent_trials=sw.max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
            storage_path=str(sweep_dir / RAY_DIR),
            callbacks=[_progress_callback(total, total - len(pending))],
            verbose=0,
        ),
    )
    results = tuner.fit()
    return [r.config["spec"]["name"] for r in results if r.error is not None]


def run_sweep(cfg: Config, address: str | None = None) -> SweepResult:
    """The whole sweep: parent run, the trials not yet finished on Tune, the report."""
    cfg = prepare_config(load_validated(cfg))
    sweep_dir = Path(cfg.finetune.output_dir) / cfg.sweep.name
    parent, uri = open_parent(cfg, sweep_dir)
    specs = trial_specs(cfg)
    done = completed_keys(uri, parent.run_id)
    pending = [s for s in specs if s["key"] not in done]
    print(f"sweep: directory {sweep_dir}; MLflow parent run {parent.run_id}", flush=True)
    print(
        f"sweep: {len(specs)} trials, {len(specs) - len(pending)} already finished, {len(pending)} to run",
        flush=True,
    )
    failed: list[str] = []
    try:
        if pending:
            sw = cfg.sweep
            need = {"num_cpus": math.ceil(sw.max_concurrent * sw.cpus_per_trial)}
            need["num_gpus"] = math.ceil(sw.max_concurrent * sw.gpus_per_trial)
            with ray_session(address, **need):
                failed = _tune(cfg, pending, parent.run_id, uri, sweep_dir, len(specs))
        paths = report(uri, parent.run_id, sweep_dir / REPORT_ARTIFACTS, tracker=parent)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FAILED" if failed else "FINISHED")
    return SweepResult(sweep_dir, parent.run_id, uri, len(pending), len(specs) - len(pending), failed, paths)


def load_validated(cfg: Config) -> Config:
    from hvdistill.config import validate

    return validate(cfg, SWEEP_SECTIONS)


def after_pretrain_config(cfg: Config, run_dir: Path | None = None) -> Config:
    """The sweep `sweep.after_pretrain` starts: the exported backbone of `run_dir` (when given) and
    random init, under `sweep.name` or `sweep-<pretraining run name>`; validated (ConfigError), so a
    pretraining launcher can check it before training."""
    checkpoints = [str(run_dir) if run_dir else RANDOM_INIT, RANDOM_INIT]
    name = cfg.sweep.name or f"sweep-{cfg.train.run_name or 'pretrain'}"
    cfg = replace(cfg, sweep=replace(cfg.sweep, checkpoints=list(dict.fromkeys(checkpoints)), name=name))
    problems = lidar_problems(cfg.model.lidar, cfg.geometry)
    if not cfg.tracking.enabled:
        problems.append(
            "tracking.enabled: sweep.after_pretrain records its trials in MLflow; it must be true"
        )
    if problems:
        raise ConfigError(problems)
    return load_validated(cfg)


def run_after_pretrain(cfg: Config, run_dir: Path, address: str | None = None) -> SweepResult:
    """`sweep.after_pretrain`: sweep the backbone `run_dir` exported (and random init)."""
    print(f"sweep: pretraining finished; sweeping its backbone {run_dir / 'backbone.pt'} and random init")
    return run_sweep(after_pretrain_config(cfg, run_dir), address)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", default=None, help="YAML diff over the default config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sweep.seeds=[0,1]")
    p.add_argument("--address", default=None, help="Ray cluster (auto, HOST:6379); default: a local Ray")
    return p


def main(argv: list[str] | None = None) -> int:
    """`hvdistill sweep CONFIG [key=value ...] [--address ADDR]`; 2: config problem, 1: failed trials."""
    args = build_parser().parse_intermixed_args(argv)  # options before or after the key=value overrides
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    try:
        result = run_sweep(load_sweep_config(config, overrides), args.address)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"hvdistill sweep: {exc}", file=sys.stderr)
        return 2
    return finish(result)


def finish(result: SweepResult) -> int:
    """Print the report and the MLflow pointer; 1 when a trial failed."""
    print_paths(result.paths, prefix="sweep")
    from hvdistill.tracking import ui_command

    print(f"sweep: MLflow parent run {result.parent_run_id}; to see it: {ui_command(result.uri)}")
    if result.failed:
        print(
            f"sweep: {len(result.failed)} trial(s) failed: {', '.join(result.failed)}; re-run with "
            f"sweep.name={result.sweep_dir.name} to run only the missing ones",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
