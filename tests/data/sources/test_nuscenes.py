"""NuScenesSource on a generated nuScenes root, checked against nuscenes-devkit itself."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
from nuscenes.nuscenes import NuScenesExplorer
from nuscenes.utils.splits import create_splits_scenes

from hvdistill.config import NUSCENES_CAMERAS, SourceConfig
from hvdistill.data.errors import DatasetLayoutError
from hvdistill.data.sources import build_source
from hvdistill.geometry.projection import project_points
from hvdistill.geometry.transforms import apply_transform, invert_transform
from tests.helpers.world import FRAMES, NUSCENES_SAMPLES, NUSCENES_VERSION

EPS32 = float(np.finfo(np.float32).eps)
ROUNDINGS = 8  # float32 roundings in the devkit's chain: 4 rotations + 4 translations
HALF_ULP = EPS32 / 2  # relative error of one float32 rounding
MIN_DIST, BORDER = 1.0, 1.0  # map_pointcloud_to_image defaults


def all_sources(root, split_file=""):
    return [
        build_source(
            SourceConfig(
                name="nuscenes", root=str(root), version=NUSCENES_VERSION, split=s, split_file=split_file
            )
        )
        for s in ("train", "val")
    ]


def all_keys(root):
    return [(src, key) for src in all_sources(root) for chunk in src.chunks() for key in src.keys(chunk)]


def chain_magnitude(sample, cam_index: int) -> float:
    """Largest coordinate the devkit's chain holds (lidar, ego, global, ego, camera frames)."""
    cam = sample.cameras[cam_index]
    steps = [
        sample.lidar_to_ego,
        sample.ego_to_global,
        invert_transform(cam.ego_to_global),
        invert_transform(cam.cam_to_ego),
    ]
    xyz, biggest = sample.points[:, :3].astype(np.float64), 0.0
    for step in steps:
        xyz = apply_transform(step, xyz)
        biggest = max(biggest, float(np.abs(xyz).max()))
    return biggest


def unfiltered_projection(sample, cam_index: int):
    """(N, 2) uv and (N,) depth of every point in float64 (no filter)."""
    t = sample.lidar_to_camera(cam_index)
    cam_xyz = apply_transform(t, sample.points[:, :3].astype(np.float64))  # (N, 3)
    depth = cam_xyz[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = cam_xyz @ sample.cameras[cam_index].intrinsics.T
        uv = uvw[:, :2] / uvw[:, 2:3]  # (N, 2)
    return uv, depth


def match_devkit_points(uv, depth, dev_uv, dev_depth, tol_px, tol_depth, candidates):
    """Indices of the devkit's kept points: its output is an in-order subsequence of the cloud."""
    found, c = [], 0
    for j in range(len(dev_depth)):
        while c < len(candidates):
            i = candidates[c]
            c += 1
            if abs(depth[i] - dev_depth[j]) <= tol_depth and np.abs(uv[i] - dev_uv[j]).max() <= tol_px[i]:
                found.append(i)
                break
        else:
            raise AssertionError(f"devkit point {j} matches no point of the cloud")
    return np.asarray(found, dtype=np.int64)


def test_projection_equals_devkit_map_pointcloud_to_image(nuscenes_root):
    """Our float64 projection keeps the devkit's point set and pixels, for every sample and camera.

    The devkit runs lidar -> ego -> global -> ego -> camera on float32 points (LidarPointCloud
    stores float32 and each of its 4 rotations and 4 translations writes back into it), so each
    step rounds to float32 (half an ulp): an absolute error up to delta = 8 * eps32 / 2 * M
    metres, M the largest coordinate on the way (global coordinates, ~1 km here: delta ~ 0.5 mm).
    Pixels inherit it through the pinhole: tol_px = f * delta / z * (1 + |u - cx| / f +
    |v - cy| / f). Those are the per-point tolerances (observed errors stay below ~20% of them:
    <= 0.003 px, <= 6e-5 m). Points whose float64 value lies within them of the depth or
    image-border filter may legitimately fall on the other side in float32; they are the only
    disagreements allowed between the kept sets, and that band must hold under 0.5% of points.
    The devkit returns the kept points (in cloud order) and their depths, not their indices: we
    recover the indices by walking the cloud in order and matching each returned point.
    """
    nusc = NuScenes(version=NUSCENES_VERSION, dataroot=str(nuscenes_root), verbose=False)
    explorer = NuScenesExplorer(nusc)
    compared, kept_total, band_total = 0, 0, 0
    for src, key in all_keys(nuscenes_root):
        sample = src.read(key)
        for ci, cam in enumerate(sample.cameras):
            lidar_token = sample.meta["lidar_token"]
            dev_uv, dev_depth, _ = explorer.map_pointcloud_to_image(lidar_token, cam.token)
            kept, band = compare_with_devkit(sample, ci, dev_uv[:2].T, dev_depth)
            compared, kept_total, band_total = compared + 1, kept_total + kept, band_total + band
    assert compared == NUSCENES_SAMPLES * len(NUSCENES_CAMERAS)
    assert kept_total > 1000, "too few projected points for the comparison to mean anything"
    assert band_total <= kept_total // 200, f"{band_total} points in the float32 band"


def compare_with_devkit(sample, ci, dev_uv, dev_depth):
    """Assert our projection of camera `ci` equals the devkit's; return (kept, band) counts."""
    cam = sample.cameras[ci]
    (width, height), k = cam.size, cam.intrinsics
    delta = ROUNDINGS * HALF_ULP * chain_magnitude(sample, ci)
    uv, depth = unfiltered_projection(sample, ci)
    with np.errstate(divide="ignore", invalid="ignore"):
        off_axis = (np.abs(uv[:, 0] - k[0, 2]) + np.abs(uv[:, 1] - k[1, 2])) / min(k[0, 0], k[1, 1])
        tol_px = max(k[0, 0], k[1, 1]) * delta / np.abs(depth) * (1.0 + off_axis)  # (N,)
    near = (depth > MIN_DIST - delta) & np.isfinite(tol_px)
    lo, hi_u, hi_v = BORDER - tol_px, width - BORDER + tol_px, height - BORDER + tol_px
    near &= (uv[:, 0] > lo) & (uv[:, 0] < hi_u) & (uv[:, 1] > lo) & (uv[:, 1] < hi_v)
    dev_index = match_devkit_points(uv, depth, dev_uv, dev_depth, tol_px, delta, np.flatnonzero(near))

    ours = project_points(
        sample.points[:, :3], sample.lidar_to_camera(ci), k, width, height, min_depth=MIN_DIST, border=BORDER
    )
    edges = [
        (depth, MIN_DIST, delta),
        (uv[:, 0], BORDER, tol_px),
        (uv[:, 0], width - BORDER, tol_px),
        (uv[:, 1], BORDER, tol_px),
        (uv[:, 1], height - BORDER, tol_px),
    ]
    in_band = near & np.any([np.abs(value - edge) <= tol for value, edge, tol in edges], axis=0)
    disagree = np.setxor1d(ours.index, dev_index)
    assert in_band[disagree].all(), f"{sample.key} {cam.name}: {disagree[~in_band[disagree]]} differ"

    common, ours_pos, dev_pos = np.intersect1d(ours.index, dev_index, return_indices=True)
    err = np.abs(ours.uv[ours_pos] - dev_uv[dev_pos]).max(axis=1)  # (M,)
    assert (err <= tol_px[common]).all(), f"{sample.key} {cam.name}: pixels differ beyond float32"
    np.testing.assert_allclose(ours.depth[ours_pos], dev_depth[dev_pos], rtol=0, atol=delta)
    return len(dev_index), int(in_band.sum())


def test_reads_every_sample_with_calibration_and_images(nuscenes_root):
    nusc = NuScenes(version=NUSCENES_VERSION, dataroot=str(nuscenes_root), verbose=False)
    keys = all_keys(nuscenes_root)
    assert len(keys) == NUSCENES_SAMPLES
    for src, key in keys:
        sample = src.read(key)
        rec = nusc.get("sample", key)
        lidar_sd = nusc.get("sample_data", rec["data"]["LIDAR_TOP"])
        raw = np.fromfile(nuscenes_root / lidar_sd["filename"], dtype=np.float32).reshape(-1, 5)
        assert sample.points.dtype == np.float32 and sample.points.shape == (len(raw), 4)
        np.testing.assert_array_equal(sample.points, raw[:, :4])
        assert [c.name for c in sample.cameras] == list(NUSCENES_CAMERAS)
        assert sample.meta["lidar_token"] == lidar_sd["token"]
        assert sample.timestamp == lidar_sd["timestamp"]
        for cam in sample.cameras:
            sd = nusc.get("sample_data", cam.token)
            assert sd["channel"] == cam.name and sd["sample_token"] == key
            assert cam.image.dtype == np.uint8 and cam.image.shape == (sd["height"], sd["width"], 3)
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            np.testing.assert_array_equal(cam.intrinsics, np.asarray(cs["camera_intrinsic"]))
            np.testing.assert_allclose(cam.cam_to_ego[:3, 3], cs["translation"], atol=0)
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            np.testing.assert_allclose(cam.ego_to_global[:3, 3], pose["translation"], atol=0)
            assert cam.timestamp == sd["timestamp"]
            for m in (cam.cam_to_ego, cam.ego_to_global):
                assert m.dtype == np.float64 and m.shape == (4, 4)
        # cameras fire after the LiDAR while the ego moves: the two ego poses must differ
        assert not np.allclose(sample.ego_to_global, sample.cameras[0].ego_to_global)


def test_labels_are_the_devkit_mapping_of_lidarseg(nuscenes_root):
    nusc = NuScenes(version=NUSCENES_VERSION, dataroot=str(nuscenes_root), verbose=False)
    mapper = LidarsegClassMapper(nusc)
    seen = set()
    for src, key in all_keys(nuscenes_root):
        sample = src.read(key)
        assert src.label_map_name == "nuscenes-lidarseg-16" == sample.meta["label_map"]
        record = nusc.get("lidarseg", sample.meta["lidar_token"])
        raw = np.fromfile(nuscenes_root / record["filename"], dtype=np.uint8)
        assert sample.labels.dtype == np.uint8 and len(sample.labels) == len(sample.points)
        np.testing.assert_array_equal(sample.labels, mapper.convert_label(raw))
        assert sample.labels.max() <= 16
        seen |= set(np.unique(sample.labels).tolist())
    assert {4, 11, 13, 15, 16} <= seen  # car, driveable_surface, sidewalk, manmade, vegetation


def test_official_splits_and_split_file(nuscenes_root, tmp_path):
    train, val = all_sources(nuscenes_root)
    official = create_splits_scenes()
    present = {s["name"] for s in train.nusc.scene}
    assert train.chunks() == [n for n in official["train"] if n in present]
    assert val.chunks() == [n for n in official["val"] if n in present]
    assert set(train.chunks()).isdisjoint(val.chunks())
    scenes = sorted(present)
    (tmp_path / "split.txt").write_text(f"# one scene\n{scenes[-1]}\n\n")
    src = all_sources(nuscenes_root, str(tmp_path / "split.txt"))[0]
    assert src.chunks() == [scenes[-1]]
    keys = src.keys(scenes[-1])
    stamps = [src.read(k).timestamp for k in keys]
    assert len(keys) == FRAMES and stamps == sorted(stamps)
    (tmp_path / "bad.txt").write_text("scene-9999\n")
    with pytest.raises(DatasetLayoutError, match="scene-9999"):
        all_sources(nuscenes_root, str(tmp_path / "bad.txt"))


def test_without_lidarseg_labels_are_none(nuscenes_copy):
    (nuscenes_copy / NUSCENES_VERSION / "lidarseg.json").unlink()
    src, key = all_keys(nuscenes_copy)[0]
    sample = src.read(key)
    assert sample.labels is None and src.label_map_name == ""
    assert len(sample.cameras) == 6


def test_camera_subset_and_wrong_version(nuscenes_root):
    cfg = SourceConfig(name="nuscenes", root=str(nuscenes_root), version=NUSCENES_VERSION, split="train")
    src = build_source(cfg, cameras=["CAM_BACK", "CAM_FRONT"])
    sample = src.read(src.keys(src.chunks()[0])[0])
    assert [c.name for c in sample.cameras] == ["CAM_BACK", "CAM_FRONT"] == src.camera_names
    assert sample.meta["camera_tokens"] == [c.token for c in sample.cameras]
    with pytest.raises(DatasetLayoutError, match="CAM_TOP"):
        build_source(cfg, cameras=["CAM_TOP"])
    with pytest.raises(DatasetLayoutError, match="v1.0-trainval"):  # names the versions it found
        build_source(SourceConfig(name="nuscenes", root=str(nuscenes_root), version="v1.0-mini"))


def test_mini_version_uses_the_mini_splits(nuscenes_copy):
    """v1.0-mini reads mini_train / mini_val: scene-0553 is mini_train but official val."""
    (nuscenes_copy / NUSCENES_VERSION).rename(nuscenes_copy / "v1.0-mini")
    (nuscenes_copy / "lidarseg" / NUSCENES_VERSION).rename(nuscenes_copy / "lidarseg" / "v1.0-mini")
    lidarseg_table = nuscenes_copy / "v1.0-mini" / "lidarseg.json"
    text = lidarseg_table.read_text().replace(f"lidarseg/{NUSCENES_VERSION}/", "lidarseg/v1.0-mini/")
    lidarseg_table.write_text(text)
    scene_table = nuscenes_copy / "v1.0-mini" / "scene.json"
    train_scene = next(n for n in create_splits_scenes()["train"] if n in scene_table.read_text())
    scene_table.write_text(scene_table.read_text().replace(f'"{train_scene}"', '"scene-0553"'))
    mini = {
        s: build_source(SourceConfig(name="nuscenes", root=str(nuscenes_copy), version="v1.0-mini", split=s))
        for s in ("train", "val")
    }
    assert "scene-0553" in mini["train"].chunks() and mini["val"].chunks() == ["scene-0103"]
    assert "scene-0553" in create_splits_scenes()["val"]
    sample = mini["train"].read(mini["train"].keys("scene-0553")[0])
    assert sample.meta["scene"] == "scene-0553" and sample.meta["version"] == "v1.0-mini"
    assert sample.labels is not None
