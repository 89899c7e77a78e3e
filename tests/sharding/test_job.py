"""The Ray sharding job end to end on a generated world: exact content, resume after a kill, damage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.prepare import prepare_sample
from hvdistill.data.schema import decode_jpeg, encode_jpeg
from hvdistill.data.shards import build_shard_dataset
from hvdistill.data.sources import build_source
from sharding.cli import main
from sharding.verify import main as verify_main

from .conftest import NUSCENES_VERSION, STORED, split_with_data

REPO = Path(__file__).resolve().parents[2]
STORED_CFG = DataConfig(stored_image_width=96, stored_image_height=54)


def shard_args(name: str, root: Path, out: Path, address: str, *overrides: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--ray-address",
        address,
        "--no-progress",
        f"data.sources.0.name={name}",
        f"data.sources.0.root={root}",
        f"data.sources.0.version={NUSCENES_VERSION}",
        f"data.sources.0.split={split_with_data(name, root)}",
        *STORED,
        *overrides,
    ]


def source_of(name: str, root: Path):
    return build_source(
        SourceConfig(name=name, root=str(root), version=NUSCENES_VERSION, split=split_with_data(name, root)),
        cameras=STORED_CFG.cameras,
    )


def all_keys(source) -> list[str]:
    return [k for chunk in source.chunks() for k in source.keys(chunk)]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_matches_prepared(got, expected, quality: int) -> None:
    assert (got.key, got.dataset, got.timestamp, got.meta) == (
        expected.key,
        expected.dataset,
        expected.timestamp,
        expected.meta,
    )
    for name in ("points", "labels", "pairs", "lidar_to_ego", "ego_to_global"):
        a, b = getattr(got, name), getattr(expected, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert len(got.cameras) == len(expected.cameras)
    for a, b in zip(got.cameras, expected.cameras):
        assert (a.name, a.token, a.timestamp) == (b.name, b.token, b.timestamp)
        for name in ("intrinsics", "cam_to_ego", "ego_to_global", "superpixels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        np.testing.assert_array_equal(a.image, decode_jpeg(encode_jpeg(b.image, quality)))


@pytest.mark.slow  # sharding through the CLI on Ray: seconds; `make test-all` runs it
def test_two_sources_shard_to_exactly_prepare_sample(ray_address, nuscenes_root, kitti_root, tmp_path):
    out = tmp_path / "shards"
    small = "data.shard_size_mb=0.03"  # several shards per chunk
    assert main(shard_args("nuscenes", nuscenes_root, out, ray_address, small)) == 0
    assert main(shard_args("semantickitti", kitti_root, out, ray_address, small)) == 0
    assert verify_main([str(out)]) == 0
    m = manifest(out)
    assert sorted(s["dataset"] for s in m["sources"]) == ["nuscenes", "semantickitti"]
    assert all(s["complete"] and s["skipped"] == 0 for s in m["sources"])
    assert m["skipped"] == [] and len(m["shards"]) > len(m["sources"])
    both = [SourceConfig(name="nuscenes"), SourceConfig(name="semantickitti")]  # each dataset needs a weight
    reader = build_shard_dataset(
        DataConfig(sources=both, resampled=False, shuffle_buffer=0), rank=0, world_size=1, shards=[str(out)]
    )
    got = {s.key: s for s in reader}
    sources = [source_of("nuscenes", nuscenes_root), source_of("semantickitti", kitti_root)]
    keys = [k for s in sources for k in all_keys(s)]
    assert sorted(got) == sorted(keys) and m["samples"] == len(keys)
    for source in sources:
        for key in all_keys(source):
            expected = prepare_sample(source.read(key), STORED_CFG)
            assert_matches_prepared(got[key], expected, STORED_CFG.jpeg_quality)
    assert reader.metrics()["bad_samples"] == 0


def wait_for_first_unit(out: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    units = out / "_state" / "units"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if units.is_dir() and any(units.glob("*.json")):
            return
        assert proc.poll() is None, "the sharding job ended before it could be killed"
        time.sleep(0.005)
    raise AssertionError("no unit finished in time")


@pytest.mark.slow  # a killed CLI subprocess, ~20 s; make test kills a worker (test_rerun.py)
def test_killed_job_resumes_to_the_uninterrupted_manifest(ray_address, nuscenes_root, tmp_path, capsys):
    per_sample = "data.shard_task_samples=1"  # one unit per sample: many points to be killed at
    reference = tmp_path / "reference"
    assert main(shard_args("nuscenes", nuscenes_root, reference, ray_address, per_sample)) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [
        sys.executable,
        "-m",
        "hvdistill.cli",
        "shard",
        *shard_args("nuscenes", nuscenes_root, killed, ray_address, per_sample),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_first_unit(killed, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sorted(p.stem for p in (killed / "_state" / "units").glob("*.json"))
    total = len(all_keys(source_of("nuscenes", nuscenes_root)))  # one unit per sample
    assert not (killed / "manifest.json").exists()
    assert 0 < len(done) < total, "the job was not killed midway"
    pending = sorted({s["name"].rsplit("-", 1)[0] for s in manifest(reference)["shards"]} - set(done))
    (killed / f"{pending[0]}-0000.tar").write_bytes(b"a stale shard without a done-record")
    capsys.readouterr()
    assert main(shard_args("nuscenes", nuscenes_root, killed, ray_address, per_sample)) == 0
    assert f"{len(done)} already done" in capsys.readouterr().out
    assert manifest(killed) == manifest(reference)
    assert not list(killed.glob("*.tmp")) and verify_main([str(killed)]) == 0
    names = sorted(p.name for p in killed.glob("*.tar"))
    assert names == sorted(s["name"] for s in manifest(reference)["shards"])  # no duplicates


def damage_inputs(root: Path, source) -> dict[str, str]:
    """Five kinds of damage on five samples; returns {damaged key: expected reason fragment}."""
    nusc, keys = source.nusc, all_keys(source)

    def files(key):
        rec = nusc.get("sample", key)["data"]
        return nusc.get("sample_data", rec["LIDAR_TOP"]), nusc.get("sample_data", rec["CAM_BACK"])

    lidar, _ = files(keys[0])
    path = root / lidar["filename"]
    path.write_bytes(path.read_bytes()[:-7])  # truncated point file
    _, cam = files(keys[1])
    (root / cam["filename"]).unlink()  # missing image
    _, cam = files(keys[2])
    path = root / cam["filename"]
    path.write_bytes(path.read_bytes()[:300])  # corrupt JPEG
    lidar, _ = files(keys[3])
    path = root / lidar["filename"]
    points = np.fromfile(path, dtype=np.float32)
    points[::50] = np.nan
    points[1::70] = np.inf
    points.tofile(path)  # non-finite points
    _, cam = files(keys[4])
    table = root / NUSCENES_VERSION / "ego_pose.json"
    records = json.loads(table.read_text())
    for r in records:
        if r["token"] == cam["ego_pose_token"]:
            r["rotation"] = [1.0, 0.0]  # malformed calibration entry
    table.write_text(json.dumps(records))
    return {keys[0]: "truncated", keys[1]: "missing", keys[2]: "decode", keys[3]: "NaN", keys[4]: "malformed"}


def test_damaged_samples_are_skipped_and_listed(ray_address, nuscenes_root, tmp_path, capsys):
    root = Path(shutil.copytree(nuscenes_root, tmp_path / "nuscenes"))
    bad = damage_inputs(root, source_of("nuscenes", root))
    out = tmp_path / "shards"
    assert main(shard_args("nuscenes", root, out, ray_address, "data.max_bad_fraction=1.0")) == 0
    m = manifest(out)
    assert sorted(s["key"] for s in m["skipped"]) == sorted(bad)
    for entry in m["skipped"]:
        assert bad[entry["key"]].lower() in entry["reason"].lower(), entry
    good = [k for k in all_keys(source_of("nuscenes", nuscenes_root)) if k not in bad]
    reader = build_shard_dataset(DataConfig(resampled=False), rank=0, world_size=1, shards=[str(out)])
    assert sorted(s.key for s in reader) == sorted(good) and m["samples"] == len(good)
    assert verify_main([str(out)]) == 0
    capsys.readouterr()
    assert main(shard_args("nuscenes", root, out, ray_address, "data.max_bad_fraction=0.1")) == 1
    err = capsys.readouterr().err
    assert f"{len(bad)} of {len(bad) + len(good)} samples are bad" in err and "truncated" in err


def test_verify_fails_on_a_corrupted_shard(ray_address, nuscenes_root, tmp_path):
    out = tmp_path / "shards"
    assert main(shard_args("nuscenes", nuscenes_root, out, ray_address)) == 0
    assert verify_main([str(out)]) == 0
    shard = out / manifest(out)["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_main([str(out)]) == 1
