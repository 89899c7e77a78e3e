"""The Ray sharding job: plan units, convert each in a Ray task, track progress, write the manifest.

The driver builds the source once to list chunks and keys, registers the source in the output
directory, and submits one task per unfinished unit. A task reads each key with the source,
applies `prepare_sample`, encodes it with the schema, writes size-bounded shards, and finally
writes the unit's done-record. Bad samples (SampleReadError) are skipped and recorded; the job
fails with a summary when more than DataConfig.max_bad_fraction of a source is bad.
Tasks report every sample to a small progress actor, so the driver's bar (samples/s, shards
written, skipped) moves live rather than once per finished unit.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.errors import SampleReadError
from hvdistill.data.prepare import prepare_sample
from hvdistill.data.schema import SchemaError, encode_sample
from hvdistill.data.sources import build_source
from sharding.manifest import (
    Unit,
    check_source_record,
    config_hash,
    read_json,
    sharding_config,
    unit_files,
    unit_record_path,
    write_json_atomic,
    write_manifest,
)
from sharding.writer import ShardWriter

_MB = 1 << 20
_SUMMARY_REASONS = 10  # distinct skip reasons printed in a failure summary
_PROGRESS_POLL_S = 0.5  # how often the driver refreshes the progress bar
_sources: dict[str, Any] = {}  # per-process cache of built sources (one per worker)


class ShardingError(RuntimeError):
    """The job finished but too many samples were bad (or nothing could be sharded)."""


@dataclass
class JobResult:
    manifest: dict[str, Any]
    converted_units: int  # units converted in this run (others were already done)
    skipped_units: int


def _source(source_cfg: SourceConfig, cameras: list[str]) -> Any:
    key = json.dumps([asdict(source_cfg), cameras], sort_keys=True)
    if key not in _sources:
        _sources[key] = build_source(source_cfg, cameras=cameras)
    return _sources[key]


def _read_prepared(source: Any, key: str, cfg: DataConfig) -> dict[str, Any]:
    """Read, prepare and encode one sample; raises SampleReadError for a bad one."""
    sample = source.read(key)
    if not np.isfinite(sample.points).all():
        raise SampleReadError(key, "", "points contain NaN or infinite values")
    try:
        return encode_sample(prepare_sample(sample, cfg), cfg.jpeg_quality)
    except SchemaError as e:
        raise SampleReadError(key, "", f"cannot encode: {e}") from e


class ProgressTracker:
    """Per-unit progress reported by tasks after every sample (a Ray actor on the driver's
    cluster); a retried unit overwrites its own entry, so totals never double count."""

    def __init__(self) -> None:
        self.units: dict[str, tuple[int, int, int]] = {}
        self.final: set[str] = set()

    def report(self, unit: str, samples: int, skipped: int, shards: int, final: bool = False) -> None:
        if unit in self.final:  # a task's late report must not undo the driver's final one
            return
        self.units[unit] = (samples, skipped, shards)
        if final:
            self.final.add(unit)

    def totals(self) -> tuple[int, int, int]:
        """(samples done, samples skipped, shards finished) over all units."""
        return tuple(sum(v[i] for v in self.units.values()) for i in range(3))  # type: ignore[return-value]


def convert_unit(
    source_cfg: SourceConfig, cfg: DataConfig, unit: Unit, out_dir: str, progress: Any = None
) -> dict[str, Any]:
    """Convert one unit into shards and write its done-record; returns that record.

    `progress` is an optional ProgressTracker actor handle told about every sample."""
    out = Path(out_dir)
    for stale in unit_files(out, unit.name):  # leftovers of a killed attempt
        stale.unlink()
    source = _source(source_cfg, list(cfg.cameras))
    writer = ShardWriter(out, unit.name, int(cfg.shard_size_mb * _MB))
    skipped = []
    try:
        for done, key in enumerate(unit.keys, 1):
            if progress is not None and done > 1:
                progress.report.remote(unit.name, done - 1, len(skipped), len(writer.shards))
            try:
                record = _read_prepared(source, key, cfg)
            except SampleReadError as e:
                skipped.append({"key": key, "reason": e.reason, "path": e.path})
                continue
            except Exception as e:  # noqa: BLE001 - an unforeseen failure of one sample is quarantined too
                skipped.append({"key": key, "reason": f"prepare failed: {type(e).__name__}: {e}", "path": ""})
                continue
            writer.write(record)  # an I/O error here (disk full) fails the task, never a "bad sample"
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    record = {
        "unit": unit.name,
        "chunk": unit.chunk,
        "part": unit.part,
        "keys": len(unit.keys),
        "shards": [s.to_dict() for s in shards],
        "skipped": skipped,
    }
    write_json_atomic(unit_record_path(out, unit.name), record)
    return record


def plan_units(source: Any, dataset: str, split: str, task_samples: int) -> list[Unit]:
    """Every chunk of the source, split into parts of at most `task_samples` keys."""
    units = []
    for chunk in source.chunks():
        keys = list(source.keys(chunk))
        for part, start in enumerate(range(0, max(len(keys), 1), task_samples)):
            units.append(Unit(dataset, split, chunk, part, keys[start : start + task_samples]))
    return units


def unit_is_done(out_dir: Path, unit: Unit) -> bool:
    """A done-record exists and every shard it lists is in place with its recorded size."""
    path = unit_record_path(out_dir, unit.name)
    if not path.exists():
        return False
    shards = read_json(path)["shards"]
    return all(
        (out_dir / s["name"]).is_file() and (out_dir / s["name"]).stat().st_size == s["bytes"] for s in shards
    )


def source_record(
    source_cfg: SourceConfig, source: Any, cfg: DataConfig, units: list[Unit]
) -> dict[str, Any]:
    config = sharding_config(cfg)
    return {
        "dataset": source.name,
        "version": source.version,
        "split": source_cfg.split,
        "root": str(source_cfg.root),
        "split_file": source_cfg.split_file,
        "label_map": source.label_map_name,
        "camera_names": list(source.camera_names),
        "config": config,
        "config_hash": config_hash(config),
        "keys_hash": config_hash({u.name: list(u.keys) for u in units}),  # the inputs themselves
        "units": [u.name for u in units],
    }


def _run_tasks(
    pending: list[Unit],
    source_cfg: SourceConfig,
    cfg: DataConfig,
    out_dir: Path,
    bar: tqdm,
    max_retries: int,
    max_in_flight: int,
) -> None:
    """Submit units (at most `max_in_flight` at once) and feed the bar as they complete."""
    task = ray.remote(num_cpus=1, max_retries=max_retries)(convert_unit)
    tracker = ray.remote(num_cpus=0)(ProgressTracker).remote()
    source_ref, cfg_ref = ray.put(source_cfg), ray.put(cfg)
    queue, refs = list(reversed(pending)), {}
    start = bar.n
    while queue or refs:
        while queue and len(refs) < max_in_flight:
            unit = queue.pop()
            refs[task.remote(source_ref, cfg_ref, unit, str(out_dir), tracker)] = unit
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=_PROGRESS_POLL_S)
        for ref in ready:
            unit, record = refs.pop(ref), ray.get(ref)
            tracker.report.remote(
                unit.name, record["keys"], len(record["skipped"]), len(record["shards"]), True
            )
        samples, skipped, shards = ray.get(tracker.totals.remote())
        bar.update(start + samples - bar.n)  # live: tasks report after every sample
        bar.set_postfix(shards=shards, skipped=skipped)
    ray.kill(tracker)


def check_bad_fraction(manifest: dict[str, Any], dataset: str, split: str, max_bad: float) -> None:
    entry = next(s for s in manifest["sources"] if s["dataset"] == dataset and s["split"] == split)
    total = entry["samples"] + entry["skipped"]
    bad = [s for s in manifest["skipped"] if s["dataset"] == dataset and s["split"] == split]
    if total and len(bad) / total <= max_bad:
        return
    reasons = Counter(s["reason"] for s in bad).most_common(_SUMMARY_REASONS)
    lines = [f"  {n} x {reason}" for reason, n in reasons]
    raise ShardingError(
        f"{dataset} {split}: {len(bad)} of {total} samples are bad "
        f"({(len(bad) / total if total else 1.0):.2%} > data.max_bad_fraction={max_bad:.2%}).\n"
        + "\n".join(lines)
        + "\nEvery skipped key and its reason is in the unit records under "
        "_state/units/; fix the inputs or raise data.max_bad_fraction, then re-run."
    )


def run_sharding(
    source_cfg: SourceConfig,
    cfg: DataConfig,
    out_dir: Path,
    max_retries: int = 3,
    progress: bool = True,
    max_in_flight: int = 0,
) -> JobResult:
    """Shard one source into `out_dir` on the connected Ray cluster (resumable).

    `max_in_flight` caps concurrent tasks (0 = one per CPU of the cluster).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = _source(source_cfg, list(cfg.cameras))
    units = plan_units(source, source.name, source_cfg.split, cfg.shard_task_samples)
    check_source_record(out_dir, source_record(source_cfg, source, cfg, units))
    pending = [u for u in units if not unit_is_done(out_dir, u)]
    done_samples = sum(len(u.keys) for u in units) - sum(len(u.keys) for u in pending)
    with tqdm(
        total=sum(len(u.keys) for u in units),
        initial=done_samples,
        unit="sample",
        desc=f"{source.name} {source_cfg.split}",
        disable=not progress,
    ) as bar:
        limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
        _run_tasks(pending, source_cfg, cfg, out_dir, bar, max_retries, limit)
    manifest = write_manifest(out_dir)
    check_bad_fraction(manifest, source.name, source_cfg.split, cfg.max_bad_fraction)
    return JobResult(manifest, len(pending), len(units) - len(pending))


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to `address` or start a local loopback Ray; returns whether we started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep a local cluster on loopback
    ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return True
