"""Read plans: `read_plan(source.plan(key))` equals the devkit-based `source.read(key)`, sample by
sample and damage by damage, and a plan is read in a process where nuscenes-devkit cannot load."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from hvdistill.config import SourceConfig
from hvdistill.data.errors import SampleReadError
from hvdistill.data.sources import build_source
from hvdistill.data.sources.plan import read_plan

from .conftest import NUSCENES_VERSION


def sources(name: str, root) -> list:
    """The source of each split that has chunks in the generated root (train and val)."""
    out = []
    for split in ("train", "val"):
        src = build_source(SourceConfig(name=name, root=str(root), version=NUSCENES_VERSION, split=split))
        if src.chunks():
            out.append(src)
    assert out, f"the generated {name} root has no chunk in the official splits"
    return out


def all_keys(src) -> list[str]:
    return [k for c in src.chunks() for k in src.keys(c)]


def assert_samples_equal(a, b) -> None:
    assert (a.key, a.dataset, a.timestamp, a.meta) == (b.key, b.dataset, b.timestamp, b.meta)
    for name in ("points", "labels", "lidar_to_ego", "ego_to_global", "pairs"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert len(a.cameras) == len(b.cameras)
    for c, d in zip(a.cameras, b.cameras):
        assert (c.name, c.token, c.timestamp) == (d.name, d.token, d.timestamp)
        for name in ("image", "intrinsics", "cam_to_ego", "ego_to_global"):
            x, y = getattr(c, name), getattr(d, name)
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=f"{c.name} {name}")


def outcome(read, key):
    """(sample, None) or (None, (key, path, reason)) of one read."""
    try:
        return read(key), None
    except SampleReadError as e:
        return None, (e.key, e.path, e.reason)


def assert_same_outcome(src, key) -> None:
    expected, expected_err = outcome(src.read, key)
    got, got_err = outcome(lambda k: read_plan(pickle.loads(pickle.dumps(src.plan(k)))), key)
    assert got_err == expected_err
    if expected is not None:
        assert_samples_equal(got, expected)


@pytest.mark.parametrize("name", ["nuscenes", "semantickitti"])
def test_plan_reading_equals_the_source_sample_by_sample(name, nuscenes_root, kitti_root):
    root = nuscenes_root if name == "nuscenes" else kitti_root
    checked = 0
    for src in sources(name, root):
        for key in all_keys(src):
            plan = src.plan(key)
            assert plan.error is None and plan.key == key and plan.chunk in src.chunks()
            assert_same_outcome(src, key)
            checked += 1
    assert checked >= 4


def test_a_plan_is_read_where_nuscenes_devkit_cannot_be_imported(nuscenes_root):
    import multiprocessing

    from tests.helpers.plan_child import read_without_devkit

    src = sources("nuscenes", nuscenes_root)[0]
    key = all_keys(src)[0]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, like a worker on another node
    results = ctx.Queue()
    child = ctx.Process(target=read_without_devkit, args=(src.plan(key), results))
    child.start()
    sample, leaked = results.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and not leaked
    assert_samples_equal(sample, src.read(key))


def nuscenes_files(src, key) -> dict:
    rec = src.nusc.get("sample", key)
    lidar = src.nusc.get("sample_data", rec["data"]["LIDAR_TOP"])
    cam = src.nusc.get("sample_data", rec["data"]["CAM_FRONT_LEFT"])
    return {
        "points": src.root / lidar["filename"],
        "image": src.root / cam["filename"],
        "labels": src.root / src.nusc.get("lidarseg", lidar["token"])["filename"],
        "pose": cam["ego_pose_token"],
    }


def damage_nuscenes(root, kind: str, files: dict) -> None:
    if kind == "truncated points":
        files["points"].write_bytes(files["points"].read_bytes()[:-6])
    elif kind == "missing image":
        files["image"].unlink()
    elif kind == "corrupt image":
        files["image"].write_bytes(files["image"].read_bytes()[:200])
    elif kind == "short labels":
        files["labels"].write_bytes(files["labels"].read_bytes()[:-1])
    elif kind == "unknown label":
        raw = np.fromfile(files["labels"], dtype=np.uint8)
        raw[3] = 200
        raw.tofile(files["labels"])
    else:  # a malformed ego pose of one camera: found while planning
        table = root / NUSCENES_VERSION / "ego_pose.json"
        records = json.loads(table.read_text())
        for r in records:
            if r["token"] == files["pose"]:
                r["rotation"] = [1.0, 0.0]
        table.write_text(json.dumps(records))


NUSCENES_DAMAGE = [
    "truncated points",
    "missing image",
    "corrupt image",
    "short labels",
    "unknown label",
    "pose",
]


@pytest.mark.parametrize("kind", NUSCENES_DAMAGE)
def test_nuscenes_damage_gives_the_same_error_through_a_plan(nuscenes_copy, kind):
    src = sources("nuscenes", nuscenes_copy)[0]
    key, other = all_keys(src)[:2]
    damage_nuscenes(nuscenes_copy, kind, nuscenes_files(src, key))
    src = sources("nuscenes", nuscenes_copy)[0]  # reload the tables
    with pytest.raises(SampleReadError):
        src.read(key)
    assert_same_outcome(src, key)
    assert_same_outcome(src, other)  # the neighbour still reads, equally


KITTI_DAMAGE = ["truncated points", "missing image", "unknown label", "calib", "pose", "times"]


@pytest.mark.parametrize("kind", KITTI_DAMAGE)
def test_kitti_damage_gives_the_same_error_through_a_plan(kitti_copy, kind):
    src = sources("semantickitti", kitti_copy)[0]
    key, other = all_keys(src)[:2]
    seq, frame = key.split("_")
    d = src.sequences_dir / seq
    if kind == "truncated points":
        path = d / "velodyne" / f"{frame}.bin"
        path.write_bytes(path.read_bytes()[:-2])
    elif kind == "missing image":
        (d / "image_2" / f"{frame}.png").unlink()
    elif kind == "unknown label":
        path = d / "labels" / f"{frame}.label"
        raw = np.fromfile(path, dtype=np.uint32)
        raw[5] = (7 << 16) | 123
        raw.tofile(path)
    elif kind == "calib":
        lines = (d / "calib.txt").read_text().splitlines()
        (d / "calib.txt").write_text("\n".join("P2: 1 2 3" if x.startswith("P2:") else x for x in lines))
    elif kind == "pose":
        (d / "poses.txt").write_text("1 0 0\n")
    else:
        (d / "times.txt").write_text("0.0 x\n")
    src = sources("semantickitti", kitti_copy)[0]
    with pytest.raises(SampleReadError):
        src.read(key)
    assert_same_outcome(src, key)
    if kind not in ("calib", "pose", "times"):  # per-sequence files damage every frame
        assert_same_outcome(src, other)
