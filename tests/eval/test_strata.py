"""Stratified evaluation: view and range masks, in-view flags from pairs.npy, per-scan and stratum
matrices that add up to the overall one, and the held-out loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hvdistill.config import DataConfig
from hvdistill.data.sample_checks import SchemaError
from hvdistill.data.schema import PAIRS, decode_npy, encode_npy
from hvdistill.data.shard_tar import RecordRef, read_members
from hvdistill.eval.classes import class_map
from hvdistill.eval.evaluate import Scorer, evaluate
from hvdistill.eval.scans import LabelledScan, ScanDataset, decode_scan, index_split
from hvdistill.eval.segmentation import build_segmentation_model
from hvdistill.eval.strata import point_strata, stratum_names
from hvdistill.eval.voxels import Voxelizer, collate_scans, voxelize_scan
from tests.eval.helpers import tiny_config

NUSCENES = class_map("nuscenes")
RANGE = [-51.2, -51.2, -3.2, 51.2, 51.2, 3.2]
EDGES = [20.0, 40.0]


def with_members(ref: RecordRef, replace: dict[str, bytes | None]) -> RecordRef:
    """The record held in memory with members replaced (None: removed)."""
    members = {**read_members(ref), **replace}
    blob, entries = b"", []
    for name, payload in members.items():
        if payload is not None:
            entries.append((name, len(blob), len(payload)))
            blob += payload
    return dataclasses.replace(ref, members=tuple(entries), data=blob)


def test_stratum_names_follow_the_edges():
    assert stratum_names(EDGES) == ["in_view", "out_view", "range_0_20", "range_20_40", "range_40_inf"]
    assert stratum_names([12.5]) == ["in_view", "out_view", "range_0_12.5", "range_12.5_inf"]


def test_range_edges_must_be_strictly_increasing_positive_distances():
    assert tiny_config("finetune.range_edges=[10,30]").finetune.range_edges == [10.0, 30.0]
    for edges in ("[30,10]", "[0,10]", "[20,20]"):
        with pytest.raises(ValueError, match="finetune.range_edges: .* must be strictly increasing"):
            tiny_config(f"finetune.range_edges={edges}")


def test_range_bins_are_half_open_and_the_view_needs_pairs():
    # horizontal distances 0, 19.99, 20 (3-4-5 triangle scaled), 39.9, 40, 75; z never counts
    xyz = np.array(
        [[0, 0, 9], [19.99, 0, 0], [12, 16, 0], [0, -39.9, 0], [-40, 0, 5], [0, 75, 0]], np.float32
    )
    in_view = np.array([1, 0, 1, 0, 0, 1], bool)
    masks = point_strata(xyz, in_view, EDGES)
    assert list(masks) == stratum_names(EDGES)
    assert masks["range_0_20"].tolist() == [1, 1, 0, 0, 0, 0]  # exactly 20 m goes to the upper bin
    assert masks["range_20_40"].tolist() == [0, 0, 1, 1, 0, 0]
    assert masks["range_40_inf"].tolist() == [0, 0, 0, 0, 1, 1]
    assert masks["in_view"].tolist() == in_view.tolist() and masks["out_view"].tolist() == (~in_view).tolist()
    unknown = point_strata(xyz, None, EDGES)
    assert not unknown["in_view"].any() and not unknown["out_view"].any()
    assert unknown["range_40_inf"].tolist() == masks["range_40_inf"].tolist()
    with pytest.raises(ValueError, match="2 in-view flags for 6 points"):
        point_strata(xyz, in_view[:2], EDGES)


def test_in_view_comes_from_pairs_and_bad_pair_indices_make_a_bad_scan(labelled_shards):
    ref = index_split(DataConfig(shards=[str(labelled_shards)]), "nuscenes", "val").refs[0]
    scan = decode_scan(ref, NUSCENES)
    pairs = decode_npy(read_members(ref)[PAIRS], np.float32, 2, columns=5)  # (M, 5)
    expected = np.zeros(len(scan.points), bool)
    expected[pairs[:, 0].astype(int)] = True
    assert np.array_equal(scan.in_view, expected) and 0 < expected.sum() < len(expected)
    for index, what in ((len(scan.points), "out of range"), (-1, "negative"), (2.5, "not an integer")):
        damaged = pairs.copy()
        damaged[0, 0] = index
        bad = with_members(ref, {PAIRS: encode_npy(damaged)})
        with pytest.raises(SchemaError, match=r"pairs.npy: point indices must be integers"):
            decode_scan(bad, NUSCENES)
        dataset = ScanDataset([bad], NUSCENES, lambda s, rng: s)
        assert dataset[0] is None, what  # a bad scan, skipped and counted
    without = decode_scan(with_members(ref, {PAIRS: None}), NUSCENES)
    assert without.in_view is None and np.array_equal(without.labels, scan.labels)


def _scans(rng: np.random.Generator) -> list[LabelledScan]:
    """Three scans of 200 points out to 60 m; the last without pairs (view unknown)."""
    scans = []
    for i in range(3):
        xyz = rng.uniform(-60, 60, (200, 3)) * [1, 1, 0.04]
        points = np.c_[xyz, rng.uniform(0, 1, 200)].astype(np.float32)
        view = rng.random(200) < 0.4 if i < 2 else None
        scans.append(LabelledScan(f"s{i}", points, rng.integers(0, 5, 200).astype(np.uint8), view))
    return scans


def test_per_scan_and_stratum_matrices_add_up_to_the_overall_one():
    rng = np.random.default_rng(0)
    scans = _scans(rng)
    items = [voxelize_scan(s, 0.4, RANGE) for s in scans]
    scorer = Scorer(5, 0, EDGES)
    for batch in (collate_scans(items[:2], 0.4, RANGE), collate_scans([None, items[2]], 0.4, RANGE)):
        scorer.add(torch.from_numpy(rng.integers(0, 5, len(batch.point_labels))), batch)
    ev = scorer.result()
    overall = ev.confusion.counts
    assert list(ev.per_scan) == ["s0", "s1", "s2"] and all(c.dtype == np.int64 for c in ev.per_scan.values())
    assert np.array_equal(sum(ev.per_scan.values()), overall) and overall.sum() == ev.stats["points_scored"]
    ranges = [ev.strata[n].counts for n in stratum_names(EDGES)[2:]]
    assert np.array_equal(sum(ranges), overall) and all(r.sum() > 0 for r in ranges)
    with_pairs = ev.per_scan["s0"] + ev.per_scan["s1"]
    assert np.array_equal(ev.strata["in_view"].counts + ev.strata["out_view"].counts, with_pairs)
    assert ev.stats["scans_without_pairs"] == 1 and ev.stats["bad_scans"] == 1 and ev.stats["scans"] == 3
    assert np.isnan(ev.stats["loss"]) and ev.stats["loss_voxels"] == 0  # no loss was added
    with pytest.raises(ValueError, match="a prediction lies outside"):
        scorer.add(torch.full((len(batch.point_labels),), 5), batch)
    assert ev.strata["in_view"].points == sum(int(((s.labels > 0) & s.in_view).sum()) for s in scans[:2])


def test_evaluate_returns_the_held_out_loss_and_every_scan(labelled_shards):
    cfg = tiny_config()
    refs = index_split(DataConfig(shards=[str(labelled_shards)]), "nuscenes", "val").refs
    dataset = ScanDataset(refs, NUSCENES, Voxelizer(0.4, RANGE, cfg.finetune, augment=False))
    batch = collate_scans([dataset[i] for i in range(len(refs))], 0.4, RANGE)  # a small grid: fast
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model.lidar, NUSCENES.num_classes)
    ev = evaluate(model, [batch], NUSCENES.num_classes, 0, "cpu", EDGES)
    with torch.no_grad():
        logits = model(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)
    expected = F.cross_entropy(logits, batch.voxel_labels, ignore_index=0)
    assert ev.stats["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert ev.stats["loss_voxels"] == int((batch.voxel_labels > 0).sum())
    assert sorted(ev.per_scan) == sorted(r.key for r in refs) and ev.stats["scans_without_pairs"] == 0
    assert np.array_equal(ev.strata["in_view"].counts + ev.strata["out_view"].counts, ev.confusion.counts)
    assert ev.strata["in_view"].points > 0 and ev.strata["out_view"].points > 0
