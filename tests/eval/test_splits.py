"""Label fractions by the SLidR protocol: deterministic, with the stated sizes, saved and read back."""

from __future__ import annotations

import json
import random

import pytest

from hvdistill.eval.splits import LabelSplit, ScanRef, keep_every, keep_scenes, make_split

# SemanticKITTI training sequences and their scan counts (19130 scans)
KITTI_TRAIN = {"00": 4541, "01": 1101, "02": 4661, "03": 801, "04": 271, "05": 2761, "06": 1101,
               "07": 1101, "09": 1591, "10": 1201}  # fmt: skip


def nuscenes_scans(scenes: int = 700, frames: int = 3, seed: int = 0) -> list[ScanRef]:
    """`scenes` scene names with `frames` keyframes each, in a shuffled order."""
    scans = [ScanRef(f"tok{s:04d}{f}", f"scene-{s + 1:04d}") for s in range(scenes) for f in range(frames)]
    random.Random(seed).shuffle(scans)
    return scans


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
    split = make_split(nuscenes_scans(), "nuscenes", fraction, source="synthetic list")
    assert len(split.units_kept) == scenes and len(split.keys) == 3 * scenes
    assert split.units_total == 700 and split.keys_total == 2100 and split.unit == "scene"
    k = keep_every(fraction)
    assert split.units_kept == [f"scene-{i:04d}" for i in range(k, 701, k)]  # the k-th, 2k-th, ... by name


def test_kitti_one_percent_keeps_every_hundredth_scan_from_the_first():
    split = make_split(kitti_scans(), "semantickitti", 0.01)
    assert split.keys_total == 19130 and len(split.keys) == 192  # ceil(19130 / 100)
    assert split.keys[:3] == ["00_000000", "00_000100", "00_000200"]
    assert split.units_kept == split.keys and split.unit == "scan"
    assert len(make_split(kitti_scans(), "semantickitti", 1.0).keys) == 19130


def test_splits_are_deterministic_whatever_the_input_order():
    for dataset, scans in (("nuscenes", nuscenes_scans), ("semantickitti", lambda seed: kitti_scans(seed))):
        a = make_split(scans(seed=1), dataset, 0.05)
        b = make_split(scans(seed=2), dataset, 0.05)
        assert a == b


def test_kitti_frames_order_as_numbers():
    scans = [ScanRef(f"08_{i}", "08", str(i)) for i in (10, 9, 100, 0, 1)]  # not zero padded
    assert make_split(scans, "semantickitti", 0.5).keys == sorted(["08_0", "08_9", "08_100"])


def test_split_saved_as_json_and_read_back(tmp_path, caplog):
    with caplog.at_level("INFO", logger="hvdistill.eval.splits"):
        split = make_split(nuscenes_scans(), "nuscenes", 0.1, source="/shards/manifest.json")
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
        make_split(nuscenes_scans(scenes=3), "nuscenes", 0.01)
    with pytest.raises(ValueError, match="occur twice"):
        make_split([ScanRef("a", "s1"), ScanRef("a", "s2")], "nuscenes", 1.0)
    with pytest.raises(ValueError, match="no label-fraction rule"):
        make_split([ScanRef("a", "s1")], "waymo", 1.0)
    assert keep_scenes(["b", "a", "a", "c"], 2) == ["b"]
