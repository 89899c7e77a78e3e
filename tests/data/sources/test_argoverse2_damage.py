"""Damaged Argoverse 2 inputs are quarantined with their reason by the real sharding path, never a crash.

Each case damages a copy of the synthetic world, shards both splits with `shard_in_process`
(the planning of the driver and `convert_unit`, what every Ray task runs) and checks the
manifest's skipped list: exactly the damaged samples, each with its reason and file; every other
sample is in the shards. Log-level tables damage the train log only: the val log still shards.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.prepare import prepare_sample
from hvdistill.data.shards import build_shard_dataset
from sharding.job import shard_in_process
from tests.helpers.av2_world import AV2_SPLITS, AV2_SWEEPS, av2_keys, av2_source

STORED = DataConfig(stored_image_width=96, stored_image_height=54)
Expected = dict[str, tuple[str, Path]]  # key -> (part of the reason, damaged file)


def shard(root: Path, out: Path) -> dict:
    sources = [SourceConfig(name="argoverse2", root=str(root), split=s) for s in AV2_SPLITS]
    return shard_in_process(sources, STORED, out)


def rewrite(path: Path, change: Callable) -> None:
    """Read a Feather table as a DataFrame, `change` it in place, write it back (NaN stays NaN)."""
    frame = feather.read_feather(path)
    change(frame)
    feather.write_feather(pa.table({c: pa.array(frame[c].to_numpy()) for c in frame.columns}), path)


def train(root: Path) -> tuple[object, list[str]]:
    src = av2_source(root, "train")
    return src, av2_keys(src)


def log_files(src, key: str) -> dict[str, Path]:
    folder = Path(src.plan(key).points).parents[2]
    return {
        "poses": folder / "city_SE3_egovehicle.feather",
        "intrinsics": folder / "calibration" / "intrinsics.feather",
        "extrinsics": folder / "calibration" / "egovehicle_SE3_sensor.feather",
    }


def every_key(keys: list[str], part: str, path: Path) -> Expected:
    return dict.fromkeys(keys, (part, path))


# ---- damage of one sample's files ----------------------------------------------------------


def truncated_sweep(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[0]).points)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {keys[0]: ("cannot read LiDAR sweep as Feather", path)}


def not_a_feather_sweep(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[1]).points)
    path.write_bytes(b"PK\x03\x04 this is no Arrow file" * 20)
    return {keys[1]: ("cannot read LiDAR sweep as Feather", path)}


def non_finite_points(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[2]).points)
    rewrite(path, lambda f: (f.loc.__setitem__((5, "x"), np.nan), f.loc.__setitem__((7, "z"), np.inf)))
    return {keys[2]: ("2 of", path)}


def mistyped_column(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[0]).points)
    rewrite(path, lambda f: f.__setitem__("y", f["y"].astype(str)))
    return {keys[0]: ("column 'y' is string, not float", path)}


def missing_column(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[1]).points)
    rewrite(path, lambda f: f.drop(columns="intensity", inplace=True))
    return {keys[1]: ("no column 'intensity'", path)}


def intensity_off_scale(root: Path) -> Expected:
    src, keys = train(root)
    path = Path(src.plan(keys[1]).points)
    rewrite(path, lambda f: f.__setitem__("intensity", f["intensity"].astype(np.float32) * 2.0 + 1.0))
    return {keys[1]: ("outside 0 .. 255", path)}


def missing_camera_frame(root: Path) -> Expected:
    src, keys = train(root)
    image = Path(src.plan(keys[1]).cameras[5].image)  # ring_side_right
    image.unlink()  # the next image of that camera is more than 25 ms away from the sweep
    return {keys[1]: ("missing camera frame", image.parent)}


def image_declaring_absurd_size(root: Path) -> Expected:
    src, keys = train(root)
    image = Path(src.plan(keys[2]).cameras[3].image)  # ring_front_center
    data = bytearray(image.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width of the JPEG frame
    image.write_bytes(bytes(data))
    return {keys[2]: ("refused before decoding", image)}


# ---- damage of log-level tables: every sample of the train log --------------------------------


def nan_pose_at_a_sweep(root: Path) -> Expected:
    src, keys = train(root)
    path, stamp = log_files(src, keys[2])["poses"], int(keys[2].rpartition("_")[2])
    rewrite(path, lambda f: f.loc.__setitem__((f["timestamp_ns"] == stamp, "qw"), np.nan))
    return {keys[2]: ("not a rigid transform", path)}


def no_pose_at_an_image(root: Path) -> Expected:
    src, keys = train(root)
    path, stamp = log_files(src, keys[0])["poses"], int(Path(src.plan(keys[0]).cameras[2].image).stem)
    rewrite(path, lambda f: f.drop(index=f.index[f["timestamp_ns"] == stamp], inplace=True))
    return {keys[0]: (f"no ego pose at timestamp {stamp}", path)}


def truncated_poses(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["poses"]
    path.write_bytes(path.read_bytes()[:-100])
    return every_key(keys, "cannot read ego poses", path)


def camera_missing_from_intrinsics(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["intrinsics"]
    rewrite(path, lambda f: f.drop(index=f.index[f["sensor_name"] == "ring_rear_right"], inplace=True))
    return every_key(keys, "no row for camera ring_rear_right", path)


def camera_missing_from_extrinsics(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["extrinsics"]
    rewrite(path, lambda f: f.drop(index=f.index[f["sensor_name"] == "ring_side_left"], inplace=True))
    return every_key(keys, "no row for camera ring_side_left", path)


def lidar_missing_from_extrinsics(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["extrinsics"]
    rewrite(path, lambda f: f.drop(index=f.index[f["sensor_name"] == "up_lidar"], inplace=True))
    return every_key(keys, "no row for up_lidar, the origin of the LiDAR frame", path)


def zero_camera_rotation(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["extrinsics"]
    rewrite(
        path,
        lambda f: f.loc.__setitem__((f["sensor_name"] == "ring_front_left", ["qw", "qx", "qy", "qz"]), 0.0),
    )
    return every_key(keys, "not a rigid transform", path)


def renamed_calibration_column(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["extrinsics"]
    rewrite(path, lambda f: f.rename(columns={"qw": "q_w"}, inplace=True))
    return every_key(keys, "no column 'qw'", path)


def truncated_intrinsics(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["intrinsics"]
    path.write_bytes(path.read_bytes()[:40])
    return every_key(keys, "cannot read intrinsics", path)


def intrinsics_absurd_size(root: Path) -> Expected:
    src, keys = train(root)
    path = log_files(src, keys[0])["intrinsics"]
    rewrite(path, lambda f: f.loc.__setitem__((f["sensor_name"] == "ring_rear_left", "width_px"), 60000))
    return {k: ("but the dataset records 60000x62", Path(src.plan(k).cameras[0].image)) for k in keys}


DAMAGE = [
    truncated_sweep,
    not_a_feather_sweep,
    non_finite_points,
    mistyped_column,
    missing_column,
    intensity_off_scale,
    missing_camera_frame,
    image_declaring_absurd_size,
    nan_pose_at_a_sweep,
    no_pose_at_an_image,
    truncated_poses,
    camera_missing_from_intrinsics,
    camera_missing_from_extrinsics,
    lidar_missing_from_extrinsics,
    zero_camera_rotation,
    renamed_calibration_column,
    truncated_intrinsics,
    intrinsics_absurd_size,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damage_is_quarantined_with_its_reason(av2_copy, tmp_path, damage):
    expected = damage(av2_copy)
    manifest = shard(av2_copy, tmp_path / "shards")
    got = {s["key"]: (s["reason"], s["path"]) for s in manifest["skipped"]}
    assert sorted(got) == sorted(expected)
    for key, (part, path) in expected.items():
        assert part in got[key][0] and got[key][1] == str(path), (got[key], part, path)
    assert manifest["samples"] == len(AV2_SPLITS) * AV2_SWEEPS - len(expected)


def test_an_intact_world_shards_to_exactly_prepare_sample(av2_root, tmp_path):
    manifest = shard(av2_root, tmp_path / "shards")
    assert manifest["skipped"] == [] and manifest["samples"] == len(AV2_SPLITS) * AV2_SWEEPS
    cfg = DataConfig(
        sources=[SourceConfig(name="argoverse2")],
        shard_splits=list(AV2_SPLITS),
        resampled=False,
        shuffle_buffer=0,
        stored_image_width=96,
        stored_image_height=54,
    )
    got = {
        s.key: s for s in build_shard_dataset(cfg, rank=0, world_size=1, shards=[str(tmp_path / "shards")])
    }
    src = av2_source(av2_root, "val")
    assert sorted(got) == sorted(av2_keys(src) + av2_keys(av2_source(av2_root, "train")))
    for key in av2_keys(src):
        expected = prepare_sample(src.read(key), STORED)
        assert got[key].dataset == "argoverse2" and got[key].labels is None and got[key].meta == expected.meta
        for name in ("points", "pairs", "lidar_to_ego", "ego_to_global"):
            np.testing.assert_array_equal(getattr(got[key], name), getattr(expected, name), err_msg=name)
        assert [c.size for c in got[key].cameras] == [c.size for c in expected.cameras]
        for a, b in zip(got[key].cameras, expected.cameras, strict=True):
            np.testing.assert_array_equal(a.ego_to_global, b.ego_to_global)


def test_a_rerun_with_other_reading_options_is_refused_not_mixed(av2_root, tmp_path):
    shard(av2_root, tmp_path / "shards")
    other = [
        SourceConfig(name="argoverse2", root=str(av2_root), split=s, lidar_origin="ego") for s in AV2_SPLITS
    ]
    with pytest.raises(ValueError, match="config_hash"):
        shard_in_process(other, STORED, tmp_path / "shards")
