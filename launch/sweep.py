"""Label-efficiency sweeps on Ray Tune: checkpoints x label fractions x seeds (x learning rates), tracked.

    hvdistill sweep CONFIG [key=value ...] [--address ADDR]

The driver (this process) validates the config for fine-tuning plus the `sweep` section, makes
its paths absolute (Tune runs each trial in another working directory), fixes the sweep
directory `<finetune.output_dir>/<sweep.name or generated>` and opens the parent MLflow run
there before any trial starts (store: `tracking.uri`, default `<sweep dir>/mlruns.db`); the
parent's id and store are written to `<sweep dir>/sweep.json` (atomically). Each trial is
`hvdistill.eval.run.run(trial config, parent_run_id=...)`, a child run tagged with its trial key
(`hvdistill.sweep.trial`: a hash of the checkpoint's backbone.pt content (its sha256), label
fraction, seed, learning rates and `finetune.linear_probe`) and its coordinates; its fine-tuning
run directory is `<sweep dir>/trials/<name>`, the name made of the checkpoint's label (reduced to
letters, digits, `.`, `_`, `-`, so it never leaves `trials/`), the coordinates and the key.

Before anything is created the driver checks what every trial would otherwise fail on: the
config (fractions by the split's own rule), shards of the training and validation splits (their
tar headers), the nuScenes scene table of a fraction below 1, and every checkpoint (each
backbone.pt is found and hashed; two checkpoints holding the same backbone are refused). The
sweep directory is then created and locked (`hvdistill.dirlock.directory_lock`: a second driver
with the same `sweep.name` stops at once); if opening the parent run fails, a sweep directory
this driver created is removed again.

Re-running with the same `sweep.name` reopens the same parent run and runs only the trials
without a FINISHED child of that key that logged `val/miou`: an interrupted sweep finishes what
is missing, a failed trial runs again, and a checkpoint pretrained again into the same directory
(another sha256) runs again instead of keeping the old results. Trials run
`sweep.max_concurrent` at a time, each holding `sweep.cpus_per_trial` CPUs and
`sweep.gpus_per_trial` GPUs of the cluster (a local Ray on 127.0.0.1 is sized to max_concurrent
trials). A line is printed per finished trial. At the end the report
(hvdistill/eval/report.py: table, plot, per-class IoU) is written to `<sweep dir>/report`,
logged to the parent run and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, flatten, from_dict, load_config, to_dict
from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.config.model import lidar_problems
from hvdistill.dirlock import directory_lock
from hvdistill.eval.report import (
    METRIC,
    REPORT_ARTIFACTS,
    SWEEP_FILE,
    TRIAL_TAG,
    print_paths,
    report,
)
from hvdistill.storage import write_atomic
from launch.local_ray import ray_session
from launch.trials import (
    backbone_digests,
    settings_problems,
    trial_config,
    trial_settings,
    trial_specs,
    trial_tags,
)

SWEEP_SECTIONS = RUN_SECTIONS["sweep"]
RAY_DIR = "ray"


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
    if not cfg.data.shards:
        problems.append("data.shards: a sweep fine-tunes on labelled shards; set data.shards=[SHARD_DIR]")
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
    """Paths absolute against `base` (default: cwd), the sweep's name fixed: Tune runs each trial in
    a working directory of its own, where a relative path (a shard directory, the nuScenes root
    whose scene table orders a label fraction) would point elsewhere."""
    base = Path.cwd() if base is None else base
    name = cfg.sweep.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    sweep = replace(cfg.sweep, name=name, checkpoints=[_absolute(c, base) for c in cfg.sweep.checkpoints])
    finetune = replace(
        cfg.finetune,
        output_dir=_absolute(cfg.finetune.output_dir, base),
        scene_table=_absolute(cfg.finetune.scene_table, base),
    )
    sources = [replace(s, root=_absolute(s.root, base)) for s in cfg.data.sources]  # the scene table's
    data = replace(cfg.data, shards=[_absolute(s, base) for s in cfg.data.shards], sources=sources)
    return replace(cfg, sweep=sweep, finetune=finetune, data=data)


def run_trial(config: dict[str, Any], base: dict[str, Any], parent: str, uri: str, sweep_dir: str) -> None:
    """One Tune trial (in a Ray worker): a fresh run directory, the fine-tuning run, its mIoU reported."""
    from ray import tune

    from hvdistill.eval.run import run

    spec = config["spec"]
    cfg = trial_config(from_dict(base, SWEEP_SECTIONS), spec, uri, Path(sweep_dir))
    threads_for(cfg.sweep.cpus_per_trial)
    shutil.rmtree(Path(cfg.finetune.output_dir) / spec["name"], ignore_errors=True)  # an interrupted try's
    result = run(cfg, parent_run_id=parent, tags=trial_tags(spec))
    classes = int(result.metrics.get("classes_in_mean", 0))
    tune.report({"miou": float(result.miou), "steps": int(result.steps), "classes_in_mean": classes})


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
            last = trial.last_result or {}
            self._line(
                trial,
                f"mIoU {100 * last.get('miou', math.nan):.2f} over {last.get('classes_in_mean')} classes",
            )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "FAILED (its error is in the Ray log above)")

    return Progress()


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


def open_parent(cfg: Config, sweep_dir: Path, previous: dict[str, Any]) -> tuple[Any, str]:
    """(parent tracker, store uri): the run recorded in sweep.json reopened, else a new one; sweep.json
    (re)written atomically with the settings every trial shares."""
    from hvdistill.tracking import prepare_tracking, start_tracker
    from hvdistill.tracking_values import default_tags

    uri = prepare_tracking(cfg.tracking, sweep_dir)
    tracking = replace(cfg.tracking, uri=uri)
    tags = {**default_tags(1), "hvdistill.kind": "sweep"}
    parent = start_tracker(
        tracking, sweep_dir, is_main=True, resume_run_id=previous.get("parent_run_id"),
        run_name=cfg.sweep.name, tags=tags,
    )  # fmt: skip
    info = {
        "parent_run_id": parent.run_id,
        "uri": uri,
        "name": cfg.sweep.name,
        "settings": trial_settings(cfg),
    }
    write_atomic(sweep_dir / SWEEP_FILE, json.dumps(info) + "\n")
    parent.log_params(flatten(cfg, ("finetune", "sweep")))
    return parent, uri


def completed_keys(uri: str, parent_run_id: str) -> set[str]:
    """Trial keys with a FINISHED child run that logged `val/miou` (one without it runs again)."""
    from hvdistill.tracking import child_runs

    return {
        r["tags"][TRIAL_TAG]
        for r in child_runs(uri, parent_run_id)
        if r["status"] == "FINISHED" and TRIAL_TAG in r["tags"] and METRIC in r["metrics"]
    }


def check_inputs(cfg: Config, sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What every trial would fail on, checked before anything is created: the checkpoints (read
    and hashed), shards of both splits, the scene table of a nuScenes fraction below 1, the
    settings of an earlier run of this sweep. Returns (the trial specs, the earlier sweep.json or {})."""
    from hvdistill.eval.finetune import scene_order
    from hvdistill.eval.scans import index_split

    ft = cfg.finetune
    specs = trial_specs(cfg, backbone_digests(cfg, sweep_dir))
    for split in (ft.train_split, ft.val_split):  # tar headers only: what every trial reads first
        index_split(cfg.data, ft.dataset, split)
    smallest = min(cfg.sweep.label_fractions)
    scene_order(replace(cfg, finetune=replace(ft, label_fraction=smallest)))
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise NotADirectoryError(f"sweep directory {sweep_dir} is a file; give another sweep.name")
    previous = read_sweep_file(sweep_dir / SWEEP_FILE)
    changed = settings_problems(previous.get("settings"), trial_settings(cfg), cfg.sweep.name)
    if changed:
        raise ConfigError(changed)
    return specs, previous


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
    """The whole sweep: inputs checked, the directory locked, parent run, the missing trials on Tune,
    the report."""
    from hvdistill.eval.run import make_dirs, remove_created

    cfg = prepare_config(load_validated(cfg))
    sweep_dir = Path(cfg.finetune.output_dir) / cfg.sweep.name
    specs, previous = check_inputs(cfg, sweep_dir)
    created = make_dirs(sweep_dir, "finetune.output_dir")
    with directory_lock(sweep_dir, "sweep"):
        try:
            parent, uri = open_parent(cfg, sweep_dir, previous)
        except BaseException:
            if created:
                remove_created(created)
            raise
        return _run_trials(cfg, sweep_dir, specs, parent, uri, address)


def _run_trials(
    cfg: Config, sweep_dir: Path, specs: list[dict[str, Any]], parent: Any, uri: str, address: str | None
) -> SweepResult:
    """The trials without a finished child on Tune, then the report; the parent run ends FAILED when
    a trial failed."""
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


def after_pretrain_config(cfg: Config, run_dir: str | Path | None = None) -> Config:
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


def run_after_pretrain(cfg: Config, run_storage: str | Path, address: str | None = None) -> SweepResult:
    """`sweep.after_pretrain`: sweep the backbone exported into the run's storage `run_storage`
    (a run directory, or its object-store location) and random init."""
    print(f"sweep: pretraining finished; sweeping its backbone in {run_storage} and random init")
    return run_sweep(after_pretrain_config(cfg, run_storage), address)


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
    except Exception as exc:  # a user mistake: one line; anything else: its traceback
        from hvdistill.cli import user_error_exit

        return user_error_exit("sweep", exc)
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
