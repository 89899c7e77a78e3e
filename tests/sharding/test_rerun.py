"""Re-runs and failures of the sharding job: a killed Ray worker, a fixed input, a failing unit, a
second job on the same directory, and workers that never load nuscenes-devkit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.sources import build_source
from hvdistill.data.sources.nuscenes import NuScenesSource
from hvdistill.dirlock import lock_location
from sharding.job import ShardingError, convert_unit, plan_units, run_sharding
from sharding.lock import OutputLocked
from sharding.verify import verify_directory

from .conftest import NUSCENES_VERSION, split_with_data

CFG = DataConfig(stored_image_width=96, stored_image_height=54, shard_task_samples=3, max_bad_fraction=1.0)


def source_cfg(root: Path) -> SourceConfig:
    split = split_with_data("nuscenes", root)
    return SourceConfig(name="nuscenes", root=str(root), version=NUSCENES_VERSION, split=split)


def shards_of(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["shards"]


@pytest.fixture(scope="module")
def reference(ray_address, nuscenes_root, tmp_path_factory) -> Path:
    """An uninterrupted run of the session world's nuScenes split with CFG."""
    out = tmp_path_factory.mktemp("reference")
    run_sharding(source_cfg(nuscenes_root), CFG, out, progress=False)
    return out


def our_ray_workers() -> list[psutil.Process]:
    """Processes of this test's local Ray cluster (its processes descend from this one)."""
    return psutil.Process().children(recursive=True)


def kill_first_converting_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first worker of our cluster seen executing convert_unit (its proctitle)."""
    while not stop.is_set():
        for proc in our_ray_workers():
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::convert_unit"):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.002)


def test_workers_never_import_the_devkit(ray_address, nuscenes_root, tmp_path):
    source = build_source(source_cfg(nuscenes_root), cameras=CFG.cameras)
    unit = plan_units(source, source.split, CFG)[0]
    plans = [source.plan(k) for k in unit.keys]

    @ray.remote(num_cpus=1, max_calls=1)  # a fresh worker process, gone afterwards
    def convert_in_fresh_worker(plans):
        before = "nuscenes" in sys.modules
        record = convert_unit(CFG, unit, plans, str(tmp_path))
        return before, "nuscenes" in sys.modules, record

    before, after, record = ray.get(convert_in_fresh_worker.remote(plans))
    assert not before and not after and "nuscenes" in sys.modules  # the driver has it, workers don't
    assert record["skipped"] == [] and sum(s["samples"] for s in record["shards"]) == len(unit.keys)


def test_killed_worker_is_retried_to_the_uninterrupted_manifest(reference, nuscenes_root, tmp_path):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_converting_worker, args=(stop, killed))
    killer.start()
    try:
        result = run_sharding(source_cfg(nuscenes_root), CFG, tmp_path / "out", progress=False)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no worker was caught converting"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert result.manifest == json.loads((reference / "manifest.json").read_text())
    assert not list((tmp_path / "out").rglob("*.tmp")) and verify_directory(tmp_path / "out") == []


@pytest.mark.slow  # ~6 s; the S3 resume test in `make test` redoes units too
def test_fixed_input_is_converted_on_rerun(reference, nuscenes_copy, tmp_path):
    source = build_source(source_cfg(nuscenes_copy), cameras=CFG.cameras)
    key = plan_units(source, source.split, CFG)[1].keys[0]
    image = Path(source.plan(key).cameras[2].image)
    good = image.read_bytes()
    image.write_bytes(good[:300])  # a truncated JPEG
    out = tmp_path / "out"
    first = run_sharding(source_cfg(nuscenes_copy), CFG, out, progress=False)
    assert [s["key"] for s in first.manifest["skipped"]] == [key]
    image.write_bytes(good)  # fixed
    again = run_sharding(source_cfg(nuscenes_copy), CFG, out, progress=False)
    assert (again.converted_units, again.retried_units, again.skipped_units) == (1, 1, 1)
    assert again.manifest["skipped"] == [] and again.manifest["sources"][0]["skipped"] == 0
    assert again.manifest["shards"] == shards_of(reference)  # the same bytes as a clean run
    assert verify_directory(out) == []


@pytest.mark.slow  # ~5 s
def test_unexpected_error_fails_the_unit_and_a_rerun_retries_it(
    reference, nuscenes_root, tmp_path, monkeypatch
):
    source = build_source(source_cfg(nuscenes_root), cameras=CFG.cameras)
    victim = plan_units(source, source.split, CFG)[0].keys[1]
    planned = NuScenesSource.plan

    def buggy_plan(self, key):  # a planning bug: the worker divides by zero columns
        plan = planned(self, key)
        return plan if key != victim else dataclasses.replace(plan, point_columns=0)

    monkeypatch.setattr(NuScenesSource, "plan", buggy_plan)
    out = tmp_path / "out"
    with pytest.raises(ShardingError, match=r"1 unit\(s\) failed.*\n.*u00000.*ZeroDivisionError"):
        run_sharding(source_cfg(nuscenes_root), CFG, out, max_retries=1, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == [] and not m["sources"][0]["complete"]  # not quarantined as a bad sample
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(NuScenesSource, "plan", planned)
    again = run_sharding(source_cfg(nuscenes_root), CFG, out, progress=False)
    assert (again.converted_units, again.skipped_units) == (1, 1)
    assert again.manifest["shards"] == shards_of(reference) and again.manifest["sources"][0]["complete"]


def test_second_job_on_the_same_directory_fails_at_once(nuscenes_root, reference, tmp_path):
    out, results = tmp_path / "out", []
    first = threading.Thread(
        target=lambda: results.append(run_sharding(source_cfg(nuscenes_root), CFG, out, progress=False))
    )
    first.start()  # the first job, in this process (flock locks of two open files conflict too)
    try:
        deadline = time.monotonic() + 120
        while not (lock_location(out).exists() and lock_location(out).read_text()):
            assert first.is_alive() and time.monotonic() < deadline, "the first job never took the lock"
            time.sleep(0.005)
        with pytest.raises(OutputLocked, match=rf"another shard job \(pid {os.getpid()} on "):
            run_sharding(source_cfg(nuscenes_root), CFG, out, progress=False)
        assert first.is_alive()  # refused while the first job still runs: no waiting
    finally:
        first.join()
    assert results and shards_of(out) == shards_of(reference)
    again = run_sharding(source_cfg(nuscenes_root), CFG, out, progress=False)  # the lock was released
    assert again.converted_units == 0
