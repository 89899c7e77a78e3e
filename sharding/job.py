"""The Ray sharding job: plan units, convert each in a Ray task from read plans, write the manifest.

The driver builds the source once (for nuScenes: the devkit tables, on the driver only), splits
its keys into units, and for each unit still to do resolves the keys into read plans
(hvdistill/data/sources/plan.py) and submits one task with them: workers never build a source
nor import nuscenes-devkit. A task reads, prepares and encodes each sample, writes size-bounded
shards under per-attempt temporary names, puts them in place (a rename in a local directory; an
atomic upload from local scratch to an object store, sharding/writer.py) and then writes the
unit's done-record, the one commit point. The output is a local directory or an object-store
prefix (`s3://bucket/prefix`, hvdistill/storage.py), with the same layout and the same
manifest; the manifest is written last. Only damaged input (SampleReadError, schema errors while
encoding) is skipped and recorded; any other exception fails the task, which Ray retries
(`max_retries`), and a unit that still fails is reported and redone by the next run.
A re-run redoes every unit without a valid done-record, whose shards are missing or have
another size than recorded (sizes from one listing of the directory), and every unit whose
record lists skipped samples, so fixed inputs are picked up; temporaries of dead attempts are
removed while the lock is held. One job at a time holds the output directory
(sharding/lock.py: a flock locally, a lease object on an object store). Tasks report every
sample to a small progress actor, so the driver's bar moves live. The job fails with a summary
when more than DataConfig.max_bad_fraction of a source is bad.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.errors import SampleReadError
from hvdistill.data.prepare import prepare_sample
from hvdistill.data.schema import SchemaError, encode_sample
from hvdistill.data.shard_names import UnsafeShardName, check_shard_name
from hvdistill.data.sources import build_source
from hvdistill.data.sources.plan import ReadPlan, read_plan
from hvdistill.dirlock import LOCK_NAME
from hvdistill.storage import Location
from sharding.lock import job_lock
from sharding.manifest import (
    SOURCES_DIR,
    STATE_DIR,
    UNITS_DIR,
    Listing,
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
from sharding.writer import TMP_SUFFIX, ShardWriter

_MB = 1 << 20
_SUMMARY_REASONS = 10  # distinct skip reasons printed in a failure summary
_PROGRESS_POLL_S = 0.5  # how often the driver refreshes the progress bar


class ShardingError(RuntimeError):
    """The job finished but too many samples were bad, or units failed (or nothing was sharded)."""


@dataclass
class JobResult:
    manifest: dict[str, Any]
    converted_units: int  # units converted in this run (others were already done)
    skipped_units: int  # units already done before this run
    retried_units: int = 0  # of the converted: units redone because they had skipped samples


def _read_prepared(plan: ReadPlan, cfg: DataConfig) -> dict[str, Any]:
    """Read, prepare and encode one sample; raises SampleReadError for damaged input."""
    sample = read_plan(plan)
    if not np.isfinite(sample.points).all():
        raise SampleReadError(plan.key, plan.points, "points contain NaN or infinite values")
    try:
        return encode_sample(prepare_sample(sample, cfg), cfg.jpeg_quality)
    except SchemaError as e:
        raise SampleReadError(plan.key, "", f"cannot encode: {e}") from e


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
    cfg: DataConfig, unit: Unit, plans: list[ReadPlan], out_dir: str, progress: Any = None
) -> dict[str, Any]:
    """Convert one unit from its read plans into shards and commit its done-record; returns it.

    Only damaged input is recorded as skipped; anything else propagates (Ray retries the task).
    `progress` is an optional ProgressTracker actor handle told about every sample; `out_dir` is a
    local directory or an object-store URI (credentials from the worker's environment)."""
    out = Location(out_dir)
    writer = ShardWriter(out, unit.name, int(cfg.shard_size_mb * _MB), samples=len(plans))
    skipped = []
    try:
        for done, plan in enumerate(plans, 1):
            if progress is not None and done > 1:
                progress.report.remote(unit.name, done - 1, len(skipped), len(writer.shards))
            try:
                record = _read_prepared(plan, cfg)
            except SampleReadError as e:
                skipped.append({"key": plan.key, "chunk": plan.chunk, "reason": e.reason, "path": e.path})
                continue
            writer.write(record)  # an I/O error here (disk full) fails the task, never a "bad sample"
        shards = writer.commit()
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
    write_json_atomic(unit_record_path(out, unit.name), record)  # the commit point
    return record


def _order(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}/{key}".encode()).digest()


def balanced_slices(n: int, most: int) -> list[slice]:
    """`n` items cut into the fewest slices of at most `most`, sizes differing by at most one
    (so no unit, hence no shard, is a small remainder); one empty slice when n == 0."""
    parts = max(1, -(-n // most))
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (i < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def plan_units(source: Any, split: str, cfg: DataConfig) -> list[Unit]:
    """The source's keys in balanced units of at most `cfg.shard_task_samples`.

    With `cfg.shard_shuffle`, units are consecutive slices of all keys of the split ordered by
    sha256(seed/key) (deterministic, independent of any RNG implementation), so every shard
    mixes scenes; otherwise every chunk is split into parts of consecutive keys."""
    n = cfg.shard_task_samples
    chunks = [(chunk, list(source.keys(chunk))) for chunk in source.chunks()]
    if cfg.shard_shuffle:
        keys = sorted((k for _, ks in chunks for k in ks), key=lambda k: _order(cfg.shard_shuffle_seed, k))
        return [Unit(source.name, split, "", i, keys[s]) for i, s in enumerate(balanced_slices(len(keys), n))]
    return [
        Unit(source.name, split, chunk, part, keys[s])
        for chunk, keys in chunks
        for part, s in enumerate(balanced_slices(len(keys), n))
    ]


def unit_state(out_dir: str | Path | Location, unit: Unit, listing: Listing | None = None) -> str:
    """ "done" (committed, nothing skipped, every shard in place with its recorded size),
    "retry" (committed with skipped samples: re-read them) or "todo". `listing`: one listing of
    `out_dir` (sizes come from it; taken now without it)."""
    listing = Listing.of(out_dir) if listing is None else listing
    path = unit_record_path(out_dir, unit.name)
    if unit.name not in listing.records:
        return "todo"
    try:
        record = read_json(path)
        shards = [(check_shard_name(s["name"], path), s["bytes"]) for s in record["shards"]]
    except (ValueError, KeyError, TypeError, UnsafeShardName):
        return "todo"  # a damaged record is no commit
    if any(listing.files.get(name) != size for name, size in shards):
        return "todo"
    return "retry" if record.get("skipped") else "done"


def clear_unit(out_dir: str | Path | Location, unit: Unit, listing: Listing | None = None) -> None:
    """Forget a unit: its done-record first (the commit point), then its shards and temporaries
    (those in `listing` when given: no request for files that are not there)."""
    if listing is None or unit.name in listing.records:
        unit_record_path(out_dir, unit.name).unlink()
    for path in unit_files(out_dir, unit.name, None if listing is None else list(listing.files)):
        path.unlink()


def remove_temporaries(out_dir: str | Path | Location) -> list[Location]:
    """Delete temporaries of dead attempts (only while this job holds the directory lock): shards
    and the manifest beside it, records under `_state/`. The lock's own temporaries
    (`job.lock.<token>.tmp`, written while a lease is renewed) belong to hvdistill/dirlock.py."""
    out = Location(out_dir)
    state = out / STATE_DIR
    found = []
    for folder in (out, state, state / UNITS_DIR, state / SOURCES_DIR):
        for name in folder.file_sizes():
            if name.endswith(TMP_SUFFIX) and not (folder == state and name.startswith(f"{LOCK_NAME}.")):
                found.append(folder / name)
    for path in found:
        path.unlink()
    return found


def source_record(
    source_cfg: SourceConfig, source: Any, cfg: DataConfig, units: list[Unit]
) -> dict[str, Any]:
    config = sharding_config(cfg)
    if source_cfg.name == "argoverse2":  # its reading options change what is stored: a re-run must match
        config = {
            **config,
            "camera_tolerance_ms": source_cfg.camera_tolerance_ms,
            "lidar_origin": source_cfg.lidar_origin,
        }
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
    source: Any,
    cfg: DataConfig,
    out: Location,
    bar: tqdm,
    max_retries: int,
    max_in_flight: int,
) -> dict[str, str]:
    """Plan and submit units (at most `max_in_flight` at once), feed the bar as they complete;
    returns {unit name: error} of units that failed after their retries."""
    task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(convert_unit)
    tracker = ray.remote(num_cpus=0)(ProgressTracker).remote()
    cfg_ref = ray.put(cfg)
    queue, refs, failed = list(reversed(pending)), {}, {}
    start = bar.n
    while queue or refs:
        while queue and len(refs) < max_in_flight:
            unit = queue.pop()
            plans = [source.plan(key) for key in unit.keys]  # planned lazily: driver memory stays small
            refs[task.remote(cfg_ref, unit, plans, str(out), tracker)] = unit
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=_PROGRESS_POLL_S)
        for ref in ready:
            unit = refs.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as exc:
                failed[unit.name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                continue
            tracker.report.remote(
                unit.name, record["keys"], len(record["skipped"]), len(record["shards"]), True
            )
        samples, skipped, shards = ray.get(tracker.totals.remote())
        bar.update(start + samples - bar.n)  # live: tasks report after every sample
        bar.set_postfix(shards=shards, skipped=skipped)
    ray.kill(tracker)
    return failed


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


def _resume(out: Location, units: list[Unit]) -> dict[str, str]:
    """Each unit's state from one listing; clears temporaries and every unit to redo (lock held)."""
    listing = Listing.of(out)
    states = {u.name: unit_state(out, u, listing) for u in units}
    remove_temporaries(out)
    for unit in units:
        if states[unit.name] != "done":
            clear_unit(out, unit, listing)
    return states


def run_sharding(
    source_cfg: SourceConfig,
    cfg: DataConfig,
    out_dir: str | Path | Location,
    max_retries: int = 3,
    progress: bool = True,
    max_in_flight: int = 0,
) -> JobResult:
    """Shard one source into `out_dir` on the connected Ray cluster (resumable, one job per dir).

    `out_dir` is a local directory or an object-store location (`s3://bucket/prefix`).
    `max_in_flight` caps concurrent tasks (0 = one per CPU of the cluster). Raises OutputLocked
    (a ValueError) when another job holds `out_dir`, ShardingError when units failed or too
    many samples were bad (the manifest is written first in both cases), StorageError when the
    store cannot be reached.
    """
    out = Location(out_dir)
    out.mkdir()
    with job_lock(out):
        source = build_source(source_cfg, cameras=list(cfg.cameras))
        units = plan_units(source, source_cfg.split, cfg)
        check_source_record(out, source_record(source_cfg, source, cfg, units))
        states = _resume(out, units)
        pending = [u for u in units if states[u.name] != "done"]
        done_samples = sum(len(u.keys) for u in units) - sum(len(u.keys) for u in pending)
        with tqdm(
            total=sum(len(u.keys) for u in units),
            initial=done_samples,
            unit="sample",
            desc=f"{source.name} {source_cfg.split}",
            disable=not progress,
        ) as bar:
            limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
            failed = _run_tasks(pending, source, cfg, out, bar, max_retries, limit)
        remove_temporaries(out)  # left by attempts that died (their retries finished)
        manifest = write_manifest(out)  # last: a reader never sees a half-written dataset
    if failed:
        lines = [f"  {name}: {error}" for name, error in sorted(failed.items())]
        raise ShardingError(
            f"{source.name} {source_cfg.split}: {len(failed)} unit(s) failed after {max_retries} "
            "retries (not a damaged input: a bug or an unavailable file system?):\n"
            + "\n".join(lines)
            + "\nThe other units are committed; re-run the same command to retry these."
        )
    check_bad_fraction(manifest, source.name, source_cfg.split, cfg.max_bad_fraction)
    retried = sum(states[u.name] == "retry" for u in pending)
    return JobResult(manifest, len(pending), len(units) - len(pending), retried)


def shard_in_process(source_cfgs: list[SourceConfig], cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Every source into `out_dir` in this process, unit by unit, with the function each Ray task
    runs (`convert_unit`) and the same records and manifest, but no Ray, no lock and no resume:
    for tests and benchmarks that need real shards fast. Returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for source_cfg in source_cfgs:
        source = build_source(source_cfg, cameras=list(cfg.cameras))
        units = plan_units(source, source_cfg.split, cfg)
        check_source_record(out, source_record(source_cfg, source, cfg, units))
        for unit in units:
            convert_unit(cfg, unit, [source.plan(k) for k in unit.keys], str(out))
    return write_manifest(out)


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to `address` or start a local loopback Ray; returns whether we started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep a local cluster on loopback
    ray.init(  # address "local": a new cluster, never another Ray running on this machine
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    return True
