"""The nuScenes layout: nuscenes-devkit loads it, lidarseg works, and images agree with points."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from hvdistill.config import NUSCENES_CAMERAS, SynthConfig
from hvdistill.geometry.projection import project_points
from hvdistill.geometry.transforms import make_transform
from hvdistill.synthetic import read_side_outputs, write_nuscenes

VERSION = "v1.0-trainval"
CFG = dict(scenes=2, frames_per_scene=2, image_width=320, image_height=180, seed=5)


@pytest.fixture(scope="module")
def nusc(tmp_path_factory):
    root = write_nuscenes(
        tmp_path_factory.mktemp("nus"), SynthConfig(**CFG), VERSION, side_outputs=True, progress=False
    )
    return NuScenes(version=VERSION, dataroot=str(root), verbose=False)


def test_devkit_loads_tables_and_splits(nusc):
    assert len(nusc.scene) == 2 and len(nusc.sample) == 4
    assert len(nusc.sample_data) == 4 * 7 and len(nusc.ego_pose) == 4 * 7
    splits = create_splits_scenes()
    names = [s["name"] for s in nusc.scene]
    assert names[0] in splits["train"] and names[1] in splits["val"]
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    assert set(sample["data"]) == {"LIDAR_TOP", *NUSCENES_CAMERAS}
    assert nusc.get("sample", sample["next"])["prev"] == sample["token"]
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    assert lidar["is_key_frame"] and nusc.get("sample_data", lidar["next"])["prev"] == lidar["token"]
    assert len(nusc.sample_annotation) > 0 and len(sample["anns"]) > 0
    box = nusc.get_box(sample["anns"][0])
    assert box.wlh.min() > 0


def test_lidarseg_loads_through_the_devkit(nusc, capsys):
    sample = nusc.sample[0]
    nusc.get_sample_lidarseg_stats(sample["token"], sort_by="index")
    out = capsys.readouterr().out
    assert "vehicle.car" in out and "flat.driveable_surface" in out
    points, colours, image = nusc.explorer.map_pointcloud_to_image(
        sample["data"]["LIDAR_TOP"], sample["data"]["CAM_FRONT"], show_lidarseg=True
    )
    assert points.shape[0] == 3 and points.shape[1] > 500 and image.size == (320, 180)
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pts = np.fromfile(f"{nusc.dataroot}/{lidar['filename']}", dtype=np.float32).reshape(-1, 5)
    labels = np.fromfile(
        f"{nusc.dataroot}/{nusc.get('lidarseg', lidar['token'])['filename']}", dtype=np.uint8
    )
    assert len(labels) == len(pts) and labels.max() < 32


def _pose(record) -> np.ndarray:
    return make_transform(Quaternion(record["rotation"]).rotation_matrix, record["translation"])


@pytest.mark.parametrize("channel", ["CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"])
def test_points_project_onto_pixels_of_their_class(nusc, channel):
    """The written calibration chain lands each point on a side-output pixel of its class."""
    agree, total = 0, 0
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cam = nusc.get("sample_data", sample["data"][channel])
        assert cam["timestamp"] > lidar["timestamp"]
        pts = np.fromfile(f"{nusc.dataroot}/{lidar['filename']}", dtype=np.float32).reshape(-1, 5)
        labels = np.fromfile(f"{nusc.dataroot}/{nusc.get('lidarseg', lidar['token'])['filename']}", np.uint8)
        cs_l, cs_c = (nusc.get("calibrated_sensor", r["calibrated_sensor_token"]) for r in (lidar, cam))
        chain = (
            np.linalg.inv(_pose(cs_c))
            @ np.linalg.inv(_pose(nusc.get("ego_pose", cam["ego_pose_token"])))
            @ _pose(nusc.get("ego_pose", lidar["ego_pose_token"]))
            @ _pose(cs_l)
        )
        proj = project_points(
            pts[:, :3], chain, np.array(cs_c["camera_intrinsic"]), cam["width"], cam["height"]
        )
        classes, depth = read_side_outputs(nusc.dataroot, cam["filename"])
        rows, cols = np.floor(proj.uv[:, 1] + 0.5).astype(int), np.floor(proj.uv[:, 0] + 0.5).astype(int)
        agree += int((classes[rows, cols] == labels[proj.index]).sum())
        total += len(proj.index)
        near = depth[rows, cols] > 0
        np.testing.assert_allclose(np.median(depth[rows, cols][near] / proj.depth[near]), 1.0, atol=0.02)
    assert total > 500
    assert agree / total > 0.85, agree / total


def test_writing_is_deterministic(tmp_path):
    cfg = SynthConfig(**{**CFG, "scenes": 1, "frames_per_scene": 1})
    a = write_nuscenes(tmp_path / "a", cfg, VERSION, progress=False)
    b = write_nuscenes(tmp_path / "b", cfg, VERSION, progress=False)
    for table in ("sample_data", "ego_pose", "sample_annotation", "lidarseg"):
        assert json.loads((a / VERSION / f"{table}.json").read_text()) == json.loads(
            (b / VERSION / f"{table}.json").read_text()
        )
    files = sorted(p.relative_to(a) for p in a.rglob("*.bin"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
