"""The downstream data path: records selected by key, checked scans, augmentation, voxels, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvdistill.config import DataConfig, FinetuneConfig
from hvdistill.data.sample_checks import SchemaError
from hvdistill.eval.classes import class_map
from hvdistill.eval.evaluate import evaluate, point_predictions
from hvdistill.eval.scans import LabelledScan, ScanDataset, decode_scan, index_split, scan_refs
from hvdistill.eval.segmentation import build_segmentation_model
from hvdistill.eval.voxels import Voxelizer, augment_xyz, collate_scans, voxelize_scan
from hvdistill.storage import Location
from tests.data.shard_helpers import upload_dir
from tests.eval.helpers import damage_labels, tiny_config

NUSCENES = class_map("nuscenes")
RANGE = [-3.2, -3.2, -1.6, 3.2, 3.2, 1.6]


def test_records_of_each_split_and_their_scenes(labelled_shards):
    data = DataConfig(shards=[str(labelled_shards)])
    train, val = index_split(data, "nuscenes", "train"), index_split(data, "nuscenes", "val")
    assert (
        len(train.refs) == 6
        and len(val.refs) == 3
        and not {r.key for r in train.refs} & {r.key for r in val.refs}
    )
    scans, bad = scan_refs(train.refs)
    assert bad == 0 and sorted({s.scene for s in scans}) == ["scene-0061", "scene-0655"]
    kitti, _ = scan_refs(index_split(data, "semantickitti", "train").refs)
    assert sorted((s.scene, s.frame) for s in kitti) == [("00", "000000"), ("00", "000001"), ("00", "000002")]
    scan = decode_scan(val.refs[0], NUSCENES)
    assert scan.points.shape[1] == 4 and len(scan.labels) == len(scan.points) and scan.labels.max() < 17
    assert scan.in_view is not None and scan.in_view.any() and not scan.in_view.all()
    plain = decode_scan(val.refs[0], NUSCENES, with_view=False)  # training: pairs.npy is not read
    assert plain.in_view is None and np.array_equal(plain.points, scan.points)
    with pytest.raises(SchemaError, match="not semantickitti's 'semantickitti-19'"):
        decode_scan(val.refs[0], class_map("semantickitti"))
    tars = sorted(labelled_shards.glob("nuscenes-val-*.tar"))
    assert (
        len(index_split(DataConfig(shards=[str(t) for t in tars]), "nuscenes", "val").refs) == 3
    )  # bare tars


def test_a_damaged_scan_is_skipped_and_counted_in_evaluation(labelled_shards, tmp_path, caplog):
    copy, key = damage_labels(labelled_shards, tmp_path)
    refs = index_split(DataConfig(shards=[str(copy)]), "nuscenes", "val").refs
    with pytest.raises(SchemaError, match="class 200 is not one of"):
        decode_scan(next(r for r in refs if r.key == key), NUSCENES)
    cfg = tiny_config()
    voxelizer = Voxelizer(0.1, cfg.finetune.point_range, cfg.finetune, augment=False)
    dataset = ScanDataset(refs, NUSCENES, voxelizer)
    batches = [collate_scans([dataset[i] for i in range(len(refs))], 0.1, cfg.finetune.point_range)]
    model = build_segmentation_model(cfg.model.lidar, NUSCENES.num_classes)
    ev = evaluate(model, batches, NUSCENES.num_classes, 0, "cpu")
    stats = ev.stats
    assert (stats["scans"], stats["bad_scans"]) == (2, 1) and f"skipping bad scan {key}" in caplog.text
    assert ev.confusion.points == stats["points_scored"] and key not in ev.per_scan and len(ev.per_scan) == 2


def test_remote_records_index_and_decode_like_local_ones(labelled_shards, s3_bucket, s3_server):
    """Shards on an object store: the same records, scenes and scans; references keep no bytes
    (a scan is read by ranged requests), a damaged remote scan is a bad scan, bare remote tars."""
    remote = upload_dir(labelled_shards, f"{s3_bucket}/labelled")
    local_split = index_split(DataConfig(shards=[str(labelled_shards)]), "nuscenes", "val")
    remote_split = index_split(DataConfig(shards=[remote], read_ahead=1), "nuscenes", "val")
    assert [(r.key, r.members) for r in remote_split.refs] == [(r.key, r.members) for r in local_split.refs]
    assert all(r.data is None and r.shard.startswith(remote) for r in remote_split.refs)
    assert scan_refs(remote_split.refs) == scan_refs(local_split.refs)
    path = f"/{Location(remote).bucket}/labelled/"
    before = len(s3_server.requests("GET", path))
    for a, b in zip(local_split.refs, remote_split.refs):
        here, there = decode_scan(a, NUSCENES), decode_scan(b, NUSCENES)
        assert here.key == there.key and np.array_equal(here.points, there.points)
        assert np.array_equal(here.labels, there.labels)
    # points, labels and meta (with pairs between them) in one ranged request per scan
    assert len(s3_server.requests("GET", path)) - before == len(remote_split.refs)
    tars = sorted(p.name for p in labelled_shards.glob("nuscenes-val-*.tar"))
    bare = index_split(DataConfig(shards=[f"{remote}/{t}" for t in tars]), "nuscenes", "val")
    assert [r.key for r in bare.refs] == [r.key for r in local_split.refs]
    victim = remote_split.refs[0]
    name, offset, size = next(m for m in victim.members if m[0] == "labels.npy")
    data = bytearray(Location(victim.shard).read_bytes())
    data[offset + size - 1] = 200  # a label no class map has, as damage_labels writes locally
    Location(victim.shard).write_bytes(bytes(data))
    with pytest.raises(SchemaError, match="class 200 is not one of"):
        decode_scan(victim, NUSCENES)


def test_augmentation_rotates_about_z_flips_and_scales():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)) * 10
    ft = FinetuneConfig(scale_range=[0.9, 1.1])
    out = augment_xyz(xyz, ft, np.random.default_rng(3))
    scale = np.linalg.norm(out, axis=1) / np.linalg.norm(xyz, axis=1)
    assert np.allclose(scale, scale[0]) and 0.9 <= scale[0] <= 1.1
    assert np.allclose(np.abs(out[:, 2]), np.abs(xyz[:, 2]) * scale[0])  # z only scaled
    plain = augment_xyz(xyz, FinetuneConfig(rotation_degrees=0, flip_probability=0), rng)
    assert np.array_equal(plain, xyz)
    flipped = augment_xyz(xyz, FinetuneConfig(rotation_degrees=0, flip_probability=1), rng)
    assert np.array_equal(flipped, xyz * [-1, -1, 1])
    yaws = [
        augment_xyz(np.array([[1.0, 0, 0]]), FinetuneConfig(flip_probability=0), np.random.default_rng(s))
        for s in range(200)
    ]
    angles = np.mod([np.arctan2(p[0, 1], p[0, 0]) for p in yaws], 2 * np.pi)
    assert angles.min() < 0.2 and angles.max() > 2 * np.pi - 0.2  # U(0, 2 pi)


def test_every_point_maps_to_the_voxel_that_contains_it_or_to_minus_one():
    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(-4, 4, (300, 3)), rng.uniform(0, 1, 300)].astype(np.float32)
    scans = [
        LabelledScan(f"k{i}", points[i * 100 : (i + 1) * 100], rng.integers(0, 17, 100).astype(np.uint8))
        for i in range(3)
    ]
    items = [voxelize_scan(s, 0.1, RANGE) for s in scans]
    batch = collate_scans([items[0], None, items[1], items[2]], 0.1, RANGE)
    assert batch.bad == 1 and batch.batch_size == 3 and batch.spatial_shape == [32, 64, 64]
    assert batch.point_labels.shape == (300,) and batch.keys == ["k0", "k1", "k2"]
    inside = np.all((points[:, :3] >= RANGE[:3]) & (points[:, :3] < RANGE[3:]), axis=1)
    p2v = batch.point_to_voxel.numpy()
    assert np.array_equal(p2v >= 0, inside) and 0 < inside.sum() < 300
    coords = batch.voxel_coords.numpy()[p2v[inside]]  # (n, 4) b, z, y, x of each inside point's voxel
    expected = np.floor((points[inside, :3] - RANGE[:3]) / 0.1).astype(int)[:, ::-1]
    assert np.array_equal(coords[:, 1:], expected)
    assert np.array_equal(coords[:, 0], np.repeat([0, 1, 2], 100)[inside])
    kept = batch.voxel_labels.numpy()[p2v[inside]]
    same_voxel_first = {}
    for i in np.flatnonzero(inside):  # a voxel's label is its first point's
        same_voxel_first.setdefault(p2v[i], batch.point_labels[i].item())
    assert all(kept[j] == same_voxel_first[v] for j, v in enumerate(p2v[inside]))


def test_point_predictions_follow_the_inverse_index_and_never_predict_ignore():
    rng = np.random.default_rng(2)
    points = np.c_[rng.uniform(-4, 4, (80, 3)), np.zeros(80)].astype(np.float32)
    batch = collate_scans(
        [voxelize_scan(LabelledScan("a", points, np.ones(80, np.uint8)), 0.1, RANGE)], 0.1, RANGE
    )
    logits = torch.randn(len(batch.voxel_coords), 5)
    logits[:, 0] = 100.0  # the ignore class would win if it were allowed
    pred = point_predictions(logits, batch, ignore_index=0)
    inside = batch.point_to_voxel >= 0
    assert torch.equal(pred[inside], logits[:, 1:].argmax(1)[batch.point_to_voxel[inside]] + 1)
    assert torch.all(pred[~inside] == 0)


def test_scores_do_not_depend_on_how_scans_are_batched_on_the_full_grid(labelled_shards):
    """3 scans in one batch of the default 2048 x 2048 x 192 grid (batch x volume > 2**31) score
    exactly like 3 batches of one: offsets are right and spconv's hashing does not overflow."""
    cfg = tiny_config()
    refs = index_split(DataConfig(shards=[str(labelled_shards)]), "nuscenes", "val").refs
    dataset = ScanDataset(
        refs, NUSCENES, Voxelizer(0.1, cfg.finetune.point_range, cfg.finetune, augment=False)
    )
    items = [dataset[i] for i in range(len(refs))]
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model.lidar, NUSCENES.num_classes)
    whole = collate_scans(items, 0.1, cfg.finetune.point_range)
    assert whole.spatial_shape == [192, 2048, 2048] and whole.batch_size == 3
    cm_whole = evaluate(model, [whole], NUSCENES.num_classes, 0, "cpu").confusion
    singles = [collate_scans([item], 0.1, cfg.finetune.point_range) for item in items]
    cm_singles = evaluate(model, singles, NUSCENES.num_classes, 0, "cpu").confusion
    assert np.array_equal(cm_whole.counts, cm_singles.counts) and cm_whole.points > 0
    assert (cm_whole.counts.sum(0) > 0).sum() > 2  # several classes predicted: the comparison has teeth
