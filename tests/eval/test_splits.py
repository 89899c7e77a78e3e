"""Label fractions by the SLidR protocol: deterministic, with the stated sizes, nuScenes scenes walked in
the scene table's order (not by name), saved and read back."""

from __future__ import annotations

import json
import random

import pytest

from hvdistill.eval.splits import (
    LabelSplit,
    ScanRef,
    find_scene_table,
    keep_every,
    keep_scenes,
    make_split,
    read_scene_order,
)

# SemanticKITTI training sequences and their scan counts (19130 scans)
KITTI_TRAIN = {"00": 4541, "01": 1101, "02": 4661, "03": 801, "04": 271, "05": 2761, "06": 1101,
               "07": 1101, "09": 1591, "10": 1201}  # fmt: skip


def nuscenes_scans(scenes: int = 700, frames: int = 3, seed: int = 0) -> list[ScanRef]:
    """`scenes` scene names with `frames` keyframes each, in a shuffled order."""
    scans = [ScanRef(f"tok{s:04d}{f}", f"scene-{s + 1:04d}") for s in range(scenes) for f in range(frames)]
    random.Random(seed).shuffle(scans)
    return scans


def table_order(scenes: int = 700) -> list[str]:
    """A scene table in name order (as the devkit lists v1.0-trainval's training scenes, mostly)."""
    return [f"scene-{s + 1:04d}" for s in range(scenes)]


def kitti_scans(seed: int = 0) -> list[ScanRef]:
    scans = [ScanRef(f"{q}_{i:06d}", q, f"{i:06d}") for q, n in KITTI_TRAIN.items() for i in range(n)]
    random.Random(seed).shuffle(scans)
    return scans


@pytest.mark.parametrize(("fraction", "k"), [(0.01, 100), (0.05, 20), (0.1, 10), (0.25, 4), (1.0, 1)])
def test_fractions_are_one_in_k(fraction, k):
    assert keep_every(fraction) == k


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.5, -0.1])
def test_fractions_that_are_not_one_in_k_are_refused(fraction):
    with pytest.raises(ValueError, match="label fraction"):
        keep_every(fraction)


@pytest.mark.parametrize(("fraction", "scenes"), [(0.01, 7), (0.05, 35), (0.1, 70), (0.25, 175), (1.0, 700)])
def test_nuscenes_keeps_floor_n_over_k_scenes_with_all_their_keyframes(fraction, scenes):
    split = make_split(nuscenes_scans(), "nuscenes", fraction, "synthetic list", table_order(), "scene.json")
    assert len(split.units_kept) == scenes and len(split.keys) == 3 * scenes
    assert split.units_total == 700 and split.keys_total == 2100 and split.unit == "scene"
    k = keep_every(fraction)
    assert split.units_kept == [
        f"scene-{i:04d}" for i in range(k, 701, k)
    ]  # the k-th, 2k-th, ... of the table
    assert split.order == "scene.json"


def test_kitti_one_percent_keeps_every_hundredth_scan_from_the_first():
    split = make_split(kitti_scans(), "semantickitti", 0.01)
    assert split.keys_total == 19130 and len(split.keys) == 192  # ceil(19130 / 100)
    assert split.keys[:3] == ["00_000000", "00_000100", "00_000200"]
    assert split.units_kept == split.keys and split.unit == "scan"
    assert len(make_split(kitti_scans(), "semantickitti", 1.0).keys) == 19130


def test_splits_are_deterministic_whatever_the_input_order():
    for dataset, scans in (("nuscenes", nuscenes_scans), ("semantickitti", lambda seed: kitti_scans(seed))):
        a = make_split(scans(seed=1), dataset, 0.05, scene_order=table_order())
        b = make_split(scans(seed=2), dataset, 0.05, scene_order=table_order())
        assert a == b


def test_nuscenes_walks_the_scene_table_in_its_order_counting_training_scenes_only():
    # a table not in name order, with validation scenes between the training ones (SLidR's counter
    # skips them): training scenes in table order are 0007, 0003, 0009, 0001, 0005, 0002
    table = ["scene-0007", "scene-0100", "scene-0003", "scene-0009", "scene-0101", "scene-0001"]
    table += ["scene-0005", "scene-0002"]
    training = [ScanRef(f"t{n}{f}", f"scene-000{n}") for n in (1, 2, 3, 5, 7, 9) for f in range(2)]
    split = make_split(
        training, "nuscenes", 0.5, scene_order=table, order_source="/data/v1.0-trainval/scene.json"
    )
    assert split.units_kept == ["scene-0003", "scene-0001", "scene-0002"]  # counter 2, 4, 6
    assert split.keys == sorted(f"t{n}{f}" for n in (1, 2, 3) for f in range(2))
    assert split.order == "/data/v1.0-trainval/scene.json" and split.units_total == 6
    by_name = sorted({s.scene for s in training})[1::2]
    assert split.units_kept != by_name  # the earlier name-order rule kept 0002, 0005, 0009
    assert keep_scenes(table, {"scene-0007", "scene-0009"}, 1) == ["scene-0007", "scene-0009"]


def test_a_fraction_below_one_needs_the_scene_table_and_the_table_must_hold_every_scene():
    with pytest.raises(ValueError, match="no scene table was found: set finetune.scene_table"):
        make_split(nuscenes_scans(scenes=20), "nuscenes", 0.1)
    with pytest.raises(ValueError, match="lacks 1 scene"):
        make_split(nuscenes_scans(scenes=20), "nuscenes", 0.1, scene_order=table_order(19))
    everything = make_split(nuscenes_scans(scenes=20), "nuscenes", 1.0)  # k = 1: every scene, no table needed
    assert len(everything.units_kept) == 20 and everything.order.startswith("by name")


def test_the_scene_table_is_read_from_scene_json_or_its_folder_and_found_under_the_sources(tmp_path):
    version = tmp_path / "nus" / "v1.0-trainval"
    version.mkdir(parents=True)
    (version / "scene.json").write_text(
        json.dumps([{"token": "a", "name": "scene-0002"}, {"name": "scene-0001"}])
    )
    assert (
        read_scene_order(version / "scene.json") == read_scene_order(version) == ["scene-0002", "scene-0001"]
    )
    assert find_scene_table(
        "", [(str(tmp_path / "none"), "v1.0-mini"), (str(tmp_path / "nus"), "v1.0-trainval")]
    ) == str(version / "scene.json")
    assert find_scene_table("/given/scene.json", []) == "/given/scene.json"
    assert find_scene_table("", [(str(tmp_path / "none"), "v1.0-mini")]) == ""
    (version / "scene.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="is not a nuScenes scene table"):
        read_scene_order(version)
    (version / "scene.json").write_text("[{")
    with pytest.raises(ValueError, match="not a readable nuScenes scene table"):
        read_scene_order(version)


def test_kitti_frames_order_as_numbers():
    scans = [ScanRef(f"08_{i}", "08", str(i)) for i in (10, 9, 100, 0, 1)]  # not zero padded
    assert make_split(scans, "semantickitti", 0.5).keys == sorted(["08_0", "08_9", "08_100"])


def test_split_saved_as_json_and_read_back(tmp_path, caplog):
    with caplog.at_level("INFO", logger="hvdistill.eval.splits"):
        split = make_split(nuscenes_scans(), "nuscenes", 0.1, "/shards/manifest.json", table_order())
    assert "70 of 700 scenes" in caplog.text
    path = split.save(tmp_path / "label_split.json")
    data = json.loads(path.read_text())
    assert data["rule"].startswith("SLidR") and data["source"] == "/shards/manifest.json"
    assert data["k"] == 10 and len(data["keys"]) == 210
    assert LabelSplit.load(path) == split
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(ValueError, match="not a label split"):
        LabelSplit.load(path)


def test_a_fraction_that_keeps_nothing_and_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="keeps no scene of the 3 training scenes"):
        make_split(nuscenes_scans(scenes=3), "nuscenes", 0.01, scene_order=table_order(3))
    with pytest.raises(ValueError, match="occur twice"):
        make_split([ScanRef("a", "s1"), ScanRef("a", "s2")], "nuscenes", 1.0)
    with pytest.raises(ValueError, match="no label-fraction rule"):
        make_split([ScanRef("a", "s1")], "waymo", 1.0)
    assert keep_scenes(["b", "a", "a", "c"], {"a", "b", "c"}, 2) == ["a"]  # the table's order, each once
