"""Each kind of damaged file raises SampleReadError naming the sample and the file; the rest reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hvdistill.config import SourceConfig
from hvdistill.data.errors import SampleReadError
from hvdistill.data.sources import build_source
from tests.helpers.world import NUSCENES_VERSION


def nuscenes_source(root):
    for split in ("train", "val"):
        cfg = SourceConfig(name="nuscenes", root=str(root), version=NUSCENES_VERSION, split=split)
        src = build_source(cfg)
        if src.chunks():
            return src
    raise AssertionError("the generated nuScenes root has no scene in the official splits")


def kitti_source(root):
    for split in ("train", "val"):
        src = build_source(SourceConfig(name="semantickitti", root=str(root), split=split))
        if src.chunks():
            return src
    raise AssertionError("the generated SemanticKITTI root has no sequence in the official splits")


def first_two_keys(src):
    keys = [k for c in src.chunks() for k in src.keys(c)]
    return keys[0], keys[1]


def assert_quarantined(src, damaged_key, other_key, path, reason_part):
    with pytest.raises(SampleReadError) as err:
        src.read(damaged_key)
    assert err.value.key == damaged_key
    assert err.value.path == str(path), err.value
    assert reason_part in err.value.reason
    assert str(path) in str(err.value) and damaged_key in str(err.value)
    src.read(other_key)  # the neighbour is untouched


def nuscenes_files(src, key):
    rec = src.nusc.get("sample", key)
    lidar = src.nusc.get("sample_data", rec["data"]["LIDAR_TOP"])
    cam = src.nusc.get("sample_data", rec["data"]["CAM_BACK"])
    labels = src.nusc.get("lidarseg", lidar["token"])
    return src.root / lidar["filename"], src.root / cam["filename"], src.root / labels["filename"], cam


def test_nuscenes_truncated_point_file(nuscenes_copy):
    src = nuscenes_source(nuscenes_copy)
    key, other = first_two_keys(src)
    lidar, _, _, _ = nuscenes_files(src, key)
    data = lidar.read_bytes()
    lidar.write_bytes(data[: len(data) - 6])
    assert_quarantined(src, key, other, lidar, "not a multiple")


def test_nuscenes_nan_points(nuscenes_copy):
    src = nuscenes_source(nuscenes_copy)
    key, other = first_two_keys(src)
    lidar, _, _, _ = nuscenes_files(src, key)
    pts = np.fromfile(lidar, dtype=np.float32).reshape(-1, 5)
    pts[7, 1] = np.nan
    pts[9, 3] = np.inf
    pts.tofile(lidar)
    assert_quarantined(src, key, other, lidar, "2 of")


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_nuscenes_bad_image(nuscenes_copy, damage):
    src = nuscenes_source(nuscenes_copy)
    key, other = first_two_keys(src)
    _, image, _, _ = nuscenes_files(src, key)
    data = image.read_bytes()
    if damage == "missing":
        image.unlink()
    elif damage == "truncated":
        image.write_bytes(data[: len(data) // 2])
    else:
        image.write_bytes(b"\x00" * 64 + data[64:])
    assert_quarantined(src, key, other, image, "missing" if damage == "missing" else "cannot decode")


def test_nuscenes_label_count_mismatch(nuscenes_copy):
    src = nuscenes_source(nuscenes_copy)
    key, other = first_two_keys(src)
    _, _, labels, _ = nuscenes_files(src, key)
    labels.write_bytes(labels.read_bytes()[:-1])
    assert_quarantined(src, key, other, labels, "labels for")


def test_nuscenes_malformed_intrinsics(nuscenes_copy):
    src = nuscenes_source(nuscenes_copy)
    key, _ = first_two_keys(src)
    _, _, _, cam = nuscenes_files(src, key)
    table = nuscenes_copy / NUSCENES_VERSION / "calibrated_sensor.json"
    records = json.loads(table.read_text())
    for r in records:
        if r["token"] == cam["calibrated_sensor_token"]:
            r["camera_intrinsic"] = [[1.0, 0.0], [0.0, 1.0]]
    table.write_text(json.dumps(records))
    src = nuscenes_source(nuscenes_copy)
    with pytest.raises(SampleReadError, match="camera_intrinsic") as err:
        src.read(key)
    assert err.value.path == str(table) and err.value.key == key


def kitti_files(src, key):
    seq, frame = key.split("_")
    d = src.sequences_dir / seq
    return (
        d / "velodyne" / f"{frame}.bin",
        d / "image_2" / f"{frame}.png",
        d / "labels" / f"{frame}.label",
        d / "calib.txt",
    )


def test_kitti_truncated_point_file_and_nan(kitti_copy):
    src = kitti_source(kitti_copy)
    key, other = first_two_keys(src)
    velodyne, _, _, _ = kitti_files(src, key)
    pts = np.fromfile(velodyne, dtype=np.float32).reshape(-1, 4)
    pts[3, 0] = np.nan
    pts.tofile(velodyne)
    assert_quarantined(src, key, other, velodyne, "NaN")
    velodyne.write_bytes(velodyne.read_bytes()[:-2])
    assert_quarantined(src, key, other, velodyne, "not a multiple")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_kitti_bad_image(kitti_copy, damage):
    src = kitti_source(kitti_copy)
    key, other = first_two_keys(src)
    _, image, _, _ = kitti_files(src, key)
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:200])
    assert_quarantined(src, key, other, image, "missing" if damage == "missing" else "cannot decode")


def test_kitti_label_count_mismatch_and_unknown_id(kitti_copy):
    src = kitti_source(kitti_copy)
    key, other = first_two_keys(src)
    _, _, labels, _ = kitti_files(src, key)
    raw = np.fromfile(labels, dtype=np.uint32)
    raw[:-1].tofile(labels)
    assert_quarantined(src, key, other, labels, "labels for")
    raw[5] = (7 << 16) | 123  # instance 7, raw id 123: not a SemanticKITTI class
    raw.tofile(labels)
    assert_quarantined(src, key, other, labels, "123")


def test_kitti_malformed_calibration(kitti_copy):
    src = kitti_source(kitti_copy)
    key, _ = first_two_keys(src)
    _, _, _, calib = kitti_files(src, key)
    lines = calib.read_text().splitlines()
    lines = [("P2: 1.0 2.0 3.0" if line.startswith("P2:") else line) for line in lines]
    calib.write_text("\n".join(lines) + "\n")
    with pytest.raises(SampleReadError) as err:
        src.read(key)
    assert err.value.path == str(calib) and err.value.key == key and "12 numbers" in err.value.reason


def test_kitti_malformed_pose_line(kitti_copy):
    src = kitti_source(kitti_copy)
    key, _ = first_two_keys(src)
    poses = src.sequences_dir / key.split("_")[0] / "poses.txt"
    lines = poses.read_text().splitlines()
    poses.write_text("\n".join(["1 0 0 0 0 1 0 0 0 0 1"] + lines[1:]) + "\n")
    with pytest.raises(SampleReadError) as err:
        src.read(key)
    assert err.value.path == str(poses) and "12 numbers" in err.value.reason
