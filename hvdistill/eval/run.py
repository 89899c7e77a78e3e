"""`hvdistill finetune CONFIG [key=value ...]`: one fine-tuning run in its own directory, tracked.

The run directory `<finetune.output_dir>/<finetune.run_name or generated>` holds everything
needed to reproduce and read the run:
    config.yaml            the resolved config
    label_split.json       the label-fraction split (what was kept, from which shards, the rule)
    backbone_load.json     where the backbone came from (sha256), what was loaded
    metrics.json           mIoU, per-class IoU, accuracy, points scored / outside the range, counts
    confusion_matrix.csv   rows = ground truth, columns = prediction
    per_class_iou.csv      per class: IoU, ground-truth and predicted points
    confusion_per_scan.*   the confusion matrix of every held-out scan (for the study's bootstrap)
    logistic/, prototype/  with finetune.frozen_probe: each readout's scores (docs/finetuning.md)
    tracking.json          the MLflow run id and store (with tracking.enabled)
With `tracking.enabled`, the run is an MLflow run (hvdistill/tracking.py; store `tracking.uri`,
default sqlite in the run directory): params = the config sections fine-tuning reads, metrics as
they come (`loss/*`, `lr/*`, `val/miou`), the files above as artifacts. A sweep passes
`parent_run_id` to nest the run under its parent.

Validation covers the sections a fine-tuning run reads (`FINETUNE_SECTIONS`) and the LiDAR model
config; the teacher's settings do not matter here.

One writer per run directory: the run holds `hvdistill.dirlock.directory_lock` on it for its
whole life, so a second process given the same `finetune.run_name` stops at once, naming the
holder. The data, the label split and the backbone are prepared before the run starts (before
config.yaml is written and tracking opens); when they fail (no shards, a fraction that keeps
nothing, a backbone that does not fit) a run directory this process created is removed again,
with the output folders it created for it, so a mistake leaves nothing behind. A run that fails
later keeps its directory (config, tracking, logs) for inspection. The state files are written
atomically (hvdistill/storage.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, flatten, load_config, to_dict
from hvdistill.config.model import lidar_problems
from hvdistill.dirlock import directory_lock
from hvdistill.eval.finetune import FinetuneResult, finetune, prepare
from hvdistill.eval.metrics import METRICS_FILE
from hvdistill.storage import write_atomic

log = logging.getLogger(__name__)
FINETUNE_SECTIONS = RUN_SECTIONS["finetune"]  # validated; plus model.lidar below
CONFIG_FILE = "config.yaml"
TRACKING_FILE = "tracking.json"
RUN_ID_CHARS = 6  # random hex characters that keep generated run names unique


def load_finetune_config(path: str | None, overrides: list[str]) -> Config:
    """The config a fine-tuning run uses, validated for what fine-tuning reads (one ConfigError)."""
    cfg = load_config(path, overrides, sections=FINETUNE_SECTIONS)
    problems = lidar_problems(cfg.model.lidar, cfg.geometry)
    if not cfg.data.shards:
        problems.append("data.shards: fine-tuning reads labelled shards; set data.shards=[SHARD_DIR]")
    if problems:
        raise ConfigError(problems)
    return cfg


def run_params(cfg: Config) -> dict[str, Any]:
    """The MLflow params of a fine-tuning run: the sections it reads."""
    params = flatten(cfg, FINETUNE_SECTIONS)
    params.update({f"model.lidar.{k}": v for k, v in flatten(cfg.model.lidar).items()})
    return params


def run_dir_of(cfg: Config) -> Path:
    """`<output_dir>/<run_name>`, the name generated when empty."""
    ft = cfg.finetune
    name = ft.run_name or (
        f"{ft.dataset}-{'probe' if ft.linear_probe else 'finetune'}-f{ft.label_fraction:g}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:RUN_ID_CHARS]}"
    )
    return Path(ft.output_dir) / name


def _refuse_finished(run_dir: Path) -> None:
    if (run_dir / METRICS_FILE).exists():
        raise FileExistsError(
            f"{run_dir} holds a finished fine-tuning run; choose another finetune.run_name or remove it"
        )


def make_dirs(directory: Path, key: str) -> list[Path]:
    """Create `directory` and its missing parents; the ones created, deepest first. A path
    component that is a file is refused, naming `key` (the config key that chose the place)."""
    for d in [directory, *directory.parents]:
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{key}: {d} is a file, not a directory; choose another {key}")
    missing = [d for d in [directory, *directory.parents] if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


@contextmanager
def run_directory(cfg: Config) -> Iterator[Path]:
    """The run directory, created and locked for the block. When the block fails before the run
    started (before config.yaml is written: nothing trained, nothing tracked), the directories this
    process created for it are removed again."""
    run_dir = run_dir_of(cfg)
    _refuse_finished(run_dir)
    created = make_dirs(run_dir, "finetune.output_dir")
    with directory_lock(run_dir, "fine-tuning run"):  # OutputLocked: another process owns it; keep it
        try:
            _refuse_finished(run_dir)  # another process may have finished it between check and lock
            yield run_dir
        except BaseException:
            if created and not (run_dir / CONFIG_FILE).exists():
                remove_created(created)
            raise


def remove_created(created: list[Path]) -> None:
    """Remove the run directory this process created, then each parent it created while empty."""
    shutil.rmtree(created[0], ignore_errors=True)
    for d in created[1:]:
        try:
            d.rmdir()
        except OSError:
            break  # something else is in it now


def run(cfg: Config, parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> FinetuneResult:
    """One fine-tuning run: its directory (locked), the data and model prepared, tracking around training."""
    with run_directory(cfg) as run_dir:
        prepared = prepare(cfg, run_dir)
        print(f"fine-tuning run directory: {run_dir}", flush=True)
        write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))  # started
        if not cfg.tracking.enabled:
            return readout(cfg, run_dir, None, prepared)
        return _tracked(cfg, run_dir, prepared, parent_run_id, tags)


def _tracked(
    cfg: Config, run_dir: Path, prepared: Any, parent_run_id: str | None, tags: dict[str, str] | None
) -> FinetuneResult:
    from hvdistill.tracking import prepare_tracking, start_tracker
    from hvdistill.tracking_values import default_tags

    uri = prepare_tracking(cfg.tracking, run_dir)
    all_tags = {
        **default_tags(1),
        "hvdistill.kind": readout_kind(cfg),
    }
    tracker = start_tracker(
        cfg.tracking,
        run_dir,
        is_main=True,
        run_name=run_dir.name,
        parent_run_id=parent_run_id,
        tags={**all_tags, **(tags or {})},
    )
    with tracker:
        write_atomic(run_dir / TRACKING_FILE, json.dumps({"run_id": tracker.run_id, "uri": uri}) + "\n")
        tracker.log_params(run_params(cfg))
        result = readout(cfg, run_dir, tracker, prepared)
        for folder, path in artifact_files(run_dir):
            tracker.log_artifact(path, folder)
    return result


def readout_kind(cfg: Config) -> str:
    ft = cfg.finetune
    return "frozen_probe" if ft.frozen_probe else "linear_probe" if ft.linear_probe else "finetune"


def readout(cfg: Config, run_dir: Path, tracker: Any, prepared: Any) -> FinetuneResult:
    """Fine-tuning (or the SGD linear probe) on the prepared data, or the frozen-feature probe."""
    if cfg.finetune.frozen_probe:
        from hvdistill.eval.probe import frozen_probe

        return frozen_probe(cfg, run_dir, tracker, prepared)
    return finetune(cfg, run_dir, tracker, prepared)


ARTIFACT_PATTERNS = ("*.json", "*.csv", "*.npy")


def artifact_files(run_dir: Path) -> list[tuple[str | None, Path]]:
    """(artifact folder, file) of what a run logs: its records, scores and per-scan confusions, also
    those of a readout's own folder (the frozen probe's logistic/ and prototype/), and its config."""
    found: list[tuple[str | None, Path]] = []
    for folder in [run_dir, *sorted(d for d in run_dir.iterdir() if (d / METRICS_FILE).is_file())]:
        name = None if folder == run_dir else folder.name
        found += [
            (name, p) for pattern in ARTIFACT_PATTERNS for p in sorted(folder.glob(pattern)) if p.is_file()
        ]
    return [*found, (None, run_dir / CONFIG_FILE)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvdistill finetune",
        description="Fine-tune (or linearly probe, finetune.linear_probe=true) the 3D backbone for semantic "
        "segmentation on labelled shards, with a label fraction; docs/finetuning.md.",
    )
    parser.add_argument("config", nargs="?", default=None, help="YAML diff over the defaults")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied in order")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_finetune_config(config, overrides)
        result = run(cfg)
    except Exception as exc:  # a user mistake: one line; anything else: its traceback
        from hvdistill.cli import user_error_exit

        return user_error_exit("finetune", exc)
    m = result.metrics
    print(
        f"mIoU {100 * result.miou:.2f} over {m['classes_in_mean']} classes, {m['points']} points "
        f"({m['points_outside_range']} outside finetune.point_range), {result.steps} steps"
    )
    for name, path in result.paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
