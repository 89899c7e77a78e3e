"""The Argoverse 2 source against the `av2` devkit on the synthetic world: same nearest images, same
points, pairs equal to the devkit's motion-compensated projection; plans, cameras, layout errors."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from hvdistill.config import NUSCENES_CAMERAS, DataConfig, SourceConfig
from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.prepare import compute_pairs
from hvdistill.data.sources import build_source
from hvdistill.data.sources.argoverse2 import Argoverse2Source, nearest
from hvdistill.data.sources.cli import main as inspect_main
from hvdistill.data.sources.plan import FEATHER_SWEEP, read_plan
from hvdistill.geometry.projection import project_points
from tests.helpers import REPO_ROOT
from tests.helpers.av2_world import AV2_SPLITS, AV2_SWEEPS, av2_keys, av2_source

RULES = DataConfig()  # the pair rule: depth > min_depth, border < u < W - border (same for v)


def devkit(root: Path, split: str):
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader

    return AV2SensorDataLoader(root / split, root / split)


def our_rule(uv: np.ndarray, depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,) bool: the project's pair rule applied to devkit pixels (N, 2) and depths (N,)."""
    (w, h), b = size, RULES.image_border
    inside = (uv[:, 0] > b) & (uv[:, 0] < w - b) & (uv[:, 1] > b) & (uv[:, 1] < h - b)
    return (depth > RULES.min_depth) & inside


@pytest.mark.parametrize("split", AV2_SPLITS)
def test_pairs_equal_the_devkit_projection_with_its_nearest_images(av2_root, split):
    from av2.structures.sweep import Sweep

    src, loader = av2_source(av2_root, split), devkit(av2_root, split)
    offsets, checked = [], 0
    for key in av2_keys(src):
        sample, plan = src.read(key), src.plan(key)
        log, stamp = plan.chunk, sample.meta["timestamp_ns"]
        sweep = Sweep.from_feather(loader.get_lidar_fpath(log, stamp))
        ego = sample.points[:, :3].astype(np.float64) + sample.lidar_to_ego[:3, 3]  # (N, 3)
        np.testing.assert_allclose(ego, sweep.xyz, rtol=0, atol=1e-5)
        pairs = compute_pairs(sample, [c.size for c in sample.cameras], RULES.min_depth, RULES.image_border)
        for i, cam in enumerate(sample.cameras):
            image = loader.get_closest_img_fpath(log, cam.name, stamp)
            assert plan.cameras[i].image == str(image)  # the devkit's nearest image
            offsets.append(int(image.stem) - stamp)
            uv, in_cam, valid = loader.project_ego_to_img_motion_compensated(
                sweep.xyz, cam.name, int(image.stem), stamp, log
            )
            ours = our_rule(uv, in_cam[:, 2], cam.size)
            assert not (ours & ~valid).any()  # our rule is stricter than the devkit's frustum
            block = pairs[pairs[:, 1] == i]  # (M, 5) point, camera, v, u, depth
            np.testing.assert_array_equal(block[:, 0].astype(np.int64), np.flatnonzero(ours))
            assert len(block) > 100
            np.testing.assert_allclose(block[:, [3, 2]], uv[ours], rtol=0, atol=1e-3)
            np.testing.assert_allclose(block[:, 4], in_cam[ours, 2], rtol=1e-6, atol=1e-5)
            # the ego moves between sweep and image: without motion compensation pixels move
            still = project_points(
                sample.points[:, :3],
                np.linalg.inv(cam.cam_to_ego) @ sample.lidar_to_ego,
                cam.intrinsics,
                *cam.size,
            )
            both = np.isin(still.index, block[:, 0].astype(np.int64))
            moved = np.abs(still.uv[both] - uv[still.index[both]]).max()
            assert moved > 0.05, moved
            checked += 1
    assert checked == AV2_SWEEPS * len(ARGOVERSE2_RING_CAMERAS)
    assert min(offsets) < 0 < max(offsets)  # the nearest image precedes the sweep for some cameras


def test_reading_a_pickled_plan_equals_read(av2_root):
    src = av2_source(av2_root, "val")
    for key in av2_keys(src):
        plan = src.plan(key)
        assert plan.error is None and plan.point_format == FEATHER_SWEEP and plan.labels is None
        a, b = read_plan(pickle.loads(pickle.dumps(plan))), src.read(key)
        assert (a.key, a.dataset, a.timestamp, a.meta, a.labels) == (
            b.key,
            b.dataset,
            b.timestamp,
            b.meta,
            None,
        )
        np.testing.assert_array_equal(a.points, b.points)
        for c, d in zip(a.cameras, b.cameras, strict=True):
            assert (c.name, c.token, c.timestamp) == (d.name, d.token, d.timestamp)
            for name in ("image", "intrinsics", "cam_to_ego", "ego_to_global"):
                np.testing.assert_array_equal(getattr(c, name), getattr(d, name))


def test_sample_contract_intensity_timestamps_and_frames(av2_root):
    import pyarrow.feather as feather

    src = av2_source(av2_root, "train")
    key = av2_keys(src)[1]
    sample = src.read(key)
    table = feather.read_table(src.plan(key).points)
    assert sample.points.dtype == np.float32 and sample.points.shape == (table.num_rows, 4)
    np.testing.assert_array_equal(sample.points[:, 3], table["intensity"].to_numpy().astype(np.float32))
    assert sample.points[:, 3].max() > 1.0  # the 0-255 scale, not KITTI's 0-1
    # the LiDAR frame: the ego axes, its origin at the up_lidar's mounting point (lidar_origin=sensor)
    mount = src._log_index(key, src.plan(key).chunk).extrinsics["up_lidar"][4:]  # tx, ty, tz
    np.testing.assert_array_equal(sample.lidar_to_ego[:3, :3], np.eye(3))
    np.testing.assert_array_equal(sample.lidar_to_ego[:3, 3], mount)
    assert mount[2] > 1.0  # the ground is ~1.6 m below the origin, as in nuScenes' and KITTI's frames
    stored = np.stack([table[c].to_numpy().astype(np.float64) for c in "xyz"], 1)  # (N, 3) ego frame
    np.testing.assert_allclose(sample.points[:, :3], stored - mount, rtol=0, atol=1e-5)
    assert sample.labels is None and src.label_map_name == "" and sample.meta["label_map"] == ""
    assert sample.timestamp == sample.meta["timestamp_ns"] // 1000 and key.endswith(
        str(sample.meta["timestamp_ns"])
    )
    stamps = sample.meta["camera_timestamps_ns"]
    assert [c.timestamp for c in sample.cameras] == [t // 1000 for t in stamps]
    assert [c.name for c in sample.cameras] == list(ARGOVERSE2_RING_CAMERAS)
    assert sample.cameras[3].size == (62, 82) and sample.cameras[0].size == (82, 62)  # front centre: portrait


def test_data_cameras_map_like_semantickitti(av2_root):
    cfg = SourceConfig(name="argoverse2", root=str(av2_root))
    assert build_source(cfg, cameras=list(NUSCENES_CAMERAS)).camera_names == list(ARGOVERSE2_RING_CAMERAS)
    chosen = build_source(cfg, cameras=["CAM_FRONT", "ring_side_right", "ring_front_center"])
    assert chosen.camera_names == ["ring_side_right", "ring_front_center"]
    assert len(chosen.read(av2_keys(chosen)[0]).cameras) == 2
    with pytest.raises(DatasetLayoutError, match="ring_front_centre"):
        Argoverse2Source(av2_root, cameras=["ring_front_centre"])


def test_split_file_unknown_logs_and_keys(av2_root, tmp_path):
    train, val = (av2_source(av2_root, s).chunks()[0] for s in AV2_SPLITS)
    listed = tmp_path / "logs.txt"
    listed.write_text(f"# both splits\n{val}\n{train}\n")
    src = av2_source(av2_root, split_file=str(listed))
    assert src.chunks() == [val, train] and len(av2_keys(src)) == 2 * AV2_SWEEPS
    listed.write_text("00000000-0000-0000-0000-000000000000\n")
    with pytest.raises(DatasetLayoutError, match="names logs that"):
        av2_source(av2_root, split_file=str(listed))
    with pytest.raises(DatasetLayoutError, match="sensors/lidar"):
        av2_source(tmp_path)
    with pytest.raises(KeyError):
        src.keys("no-such-log")
    for bad in (f"{train}_12x", f"{train}", "other_315966265000000000"):
        with pytest.raises(SampleReadError, match="key is not"):
            src.read(bad)


def test_nearest_breaks_ties_towards_the_earlier_image_like_the_devkit():
    times = np.array([100, 200, 300], dtype=np.int64)
    assert [nearest(times, t) for t in (0, 150, 151, 260, 999)] == [100, 100, 200, 300, 300]
    assert nearest(np.zeros(0, dtype=np.int64), 5) is None


def test_inspect_reports_the_logs_cameras_and_no_labels(av2_root, capsys):
    assert (
        inspect_main(["--source", "argoverse2", "--root", str(av2_root), "--split", "val", "--limit", "0"])
        == 0
    )
    out = capsys.readouterr().out
    assert "source      argoverse2 (av2-sensor), split val" in out and "0 damaged" in out
    assert "ring_front_center" in out and "62x82 (x3)" in out and "labels      none" in out


def test_the_runtime_never_imports_the_av2_devkit():
    statement = re.compile(r"^\s*(?:import|from)\s+av2\b", re.M)
    found = [
        str(path)
        for folder in ("hvdistill", "sharding", "launch")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if statement.search(path.read_text())
    ]
    assert not found  # the devkit is the tests' reference, never a runtime dependency


def test_lidar_origin_ego_keeps_the_stored_frame_and_the_same_pixels(av2_root):
    import pyarrow.feather as feather

    sensor, ego = av2_source(av2_root, "train"), av2_source(av2_root, "train", lidar_origin="ego")
    key = av2_keys(ego)[0]
    a, b = sensor.read(key), ego.read(key)
    table = feather.read_table(ego.plan(key).points)
    np.testing.assert_array_equal(b.points[:, 0], table["x"].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(b.lidar_to_ego, np.eye(4))
    assert not np.allclose(a.points[:, 2], b.points[:, 2])
    sizes = [c.size for c in a.cameras]
    pa = compute_pairs(a, sizes, RULES.min_depth, RULES.image_border)  # (M, 5)
    pb = compute_pairs(b, sizes, RULES.min_depth, RULES.image_border)
    np.testing.assert_array_equal(pa[:, :2], pb[:, :2])  # the frame moves the points, not their pixels
    np.testing.assert_allclose(pa[:, 2:], pb[:, 2:], rtol=0, atol=1e-3)


def test_one_camera_list_chooses_cameras_of_every_dataset(av2_root, nuscenes_root):
    chosen = ["CAM_FRONT", "ring_front_center", "CAM_BACK", "ring_rear_left"]
    av2 = build_source(SourceConfig(name="argoverse2", root=str(av2_root)), cameras=chosen)
    nus = build_source(
        SourceConfig(name="nuscenes", root=str(nuscenes_root), version="v1.0-trainval"), cameras=chosen
    )
    assert av2.camera_names == ["ring_front_center", "ring_rear_left"]
    assert nus.camera_names == ["CAM_FRONT", "CAM_BACK"]
    with pytest.raises(DatasetLayoutError, match="CAM_FRNT"):  # a typo is still refused
        build_source(
            SourceConfig(name="nuscenes", root=str(nuscenes_root), version="v1.0-trainval"),
            cameras=["CAM_FRNT", "ring_front_center"],
        )
