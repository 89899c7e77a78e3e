"""Manifest bookkeeping: unit names, refusing a changed config, assembling from done-records."""

import pytest

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.sources import build_source
from sharding.job import balanced_slices, plan_units
from sharding.manifest import (
    Unit,
    build_manifest,
    check_source_record,
    config_hash,
    sharding_config,
    unit_files,
    unit_record_path,
    write_json_atomic,
)

from .conftest import NUSCENES_VERSION


def source_record(cfg: DataConfig, units: list[str]) -> dict:
    config = sharding_config(cfg)
    return {
        "dataset": "nuscenes",
        "split": "train",
        "version": "v1.0-trainval",
        "root": "/d",
        "config": config,
        "config_hash": config_hash(config),
        "units": units,
    }


def test_unit_names_are_deterministic_and_safe():
    assert Unit("nuscenes", "train", "", 7).name == "nuscenes-train-u00007"  # drawn from the split
    assert Unit("nuscenes", "train", "scene-0001", 0).name == "nuscenes-train-scene-0001-p000"
    assert Unit("semantickitti", "val", "08", 12).name == "semantickitti-val-08-p012"
    assert Unit("x", "train", "a.b/c", 1).name == "x-train-a_b_c-p001"


def test_unit_files_match_exactly(tmp_path):
    for name in (
        "ds-train-s1-p000-0000.tar",
        "ds-train-s1-p000-0001.tar.tmp",
        "ds-train-s1-p000-0001.tar.0a1b2c3d4e5f.tmp",
        "ds-train-s1-p0001-0000.tar",
        "ds-train-s11-p000-0000.tar",
        "ds-train-s1-p000-0000.tar.x.tmp",
    ):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in unit_files(tmp_path, "ds-train-s1-p000")] == [
        "ds-train-s1-p000-0000.tar",
        "ds-train-s1-p000-0001.tar.0a1b2c3d4e5f.tmp",
        "ds-train-s1-p000-0001.tar.tmp",
    ]


def test_changed_config_in_the_same_directory_is_refused(tmp_path):
    check_source_record(tmp_path, source_record(DataConfig(), ["u0"]))
    check_source_record(tmp_path, source_record(DataConfig(), ["u0"]))  # same: fine
    with pytest.raises(ValueError, match="config_hash.*new --out"):
        check_source_record(tmp_path, source_record(DataConfig(jpeg_quality=80), ["u0"]))


def test_manifest_lists_finished_units_only(tmp_path):
    check_source_record(tmp_path, source_record(DataConfig(), ["u0", "u1"]))
    shard = {"name": "u0-0000.tar", "samples": 3, "bytes": 10, "sha256": "ab"}
    write_json_atomic(
        unit_record_path(tmp_path, "u0"),
        {
            "unit": "u0",
            "chunk": "c0",
            "part": 0,
            "keys": 4,
            "shards": [shard],
            "skipped": [{"key": "k9", "chunk": "scene-9", "reason": "file is missing", "path": "/x"}],
        },
    )
    m = build_manifest(tmp_path)
    (source,) = m["sources"]
    assert (source["samples"], source["skipped"], source["complete"]) == (3, 1, False)
    assert "units" not in source and m["samples"] == 3
    assert m["shards"] == [{**shard, "dataset": "nuscenes", "split": "train", "unit": "u0"}]
    assert m["skipped"][0]["key"] == "k9" and m["skipped"][0]["chunk"] == "scene-9"


def test_units_are_balanced_slices_of_a_hash_ordered_split(nuscenes_root):
    cfg = SourceConfig(name="nuscenes", root=str(nuscenes_root), version=NUSCENES_VERSION, split="train")
    source = build_source(cfg)
    keys = [k for c in source.chunks() for k in source.keys(c)]
    units = plan_units(source, "train", DataConfig(shard_task_samples=4))
    assert [len(u.keys) for u in units] == [3, 3] and sorted(k for u in units for k in u.keys) == sorted(keys)
    assert [u.name for u in units] == ["nuscenes-train-u00000", "nuscenes-train-u00001"]
    assert units == plan_units(source, "train", DataConfig(shard_task_samples=4))  # deterministic
    other = plan_units(source, "train", DataConfig(shard_task_samples=4, shard_shuffle_seed=1))
    assert [u.keys for u in other] != [u.keys for u in units]
    scene = {k: c for c in source.chunks() for k in source.keys(c)}
    assert any(len({scene[k] for k in u.keys}) > 1 for u in units)  # units mix scenes
    per_chunk = plan_units(source, "train", DataConfig(shard_task_samples=2, shard_shuffle=False))
    assert [(u.chunk, u.keys) for u in per_chunk[:2]] == [
        (source.chunks()[0], keys[:2]),
        (source.chunks()[0], keys[2:3]),
    ]
    assert [len(s.keys) for s in per_chunk] == [2, 1, 2, 1]
    assert [(s.start, s.stop) for s in balanced_slices(7, 3)] == [(0, 3), (3, 5), (5, 7)]
