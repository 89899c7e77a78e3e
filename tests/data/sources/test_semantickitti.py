"""SemanticKITTISource on a generated SemanticKITTI root: labels, calibration, splits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hvdistill.config import SourceConfig
from hvdistill.data.errors import DatasetLayoutError
from hvdistill.data.sources import build_source
from hvdistill.data.sources.labels import SEMANTICKITTI_LEARNING_MAP, semantickitti_lookup
from hvdistill.geometry.projection import project_points
from hvdistill.geometry.transforms import invert_transform
from hvdistill.synthetic import read_side_outputs
from tests.helpers.world import FRAMES


def source(root, split="train", split_file="", cameras=None):
    cfg = SourceConfig(name="semantickitti", root=str(root), split=split, split_file=split_file)
    return build_source(cfg, cameras=cameras)


def calib_matrix(path, name):
    """(4, 4) of a calib.txt entry, parsed independently of the reader."""
    for line in path.read_text().splitlines():
        if line.startswith(name + ":"):
            m = np.eye(4)
            m[:3] = np.array(line.split()[1:], dtype=np.float64).reshape(3, 4)
            return m
    raise AssertionError(f"{name} not in {path}")


def test_reads_points_labels_and_calibration(kitti_root):
    src = source(kitti_root)
    assert src.chunks() == ["00"] and src.keys("00") == [f"00_{i:06d}" for i in range(FRAMES)]
    poses = np.loadtxt(kitti_root / "sequences/00/poses.txt").reshape(-1, 3, 4)
    for frame, key in enumerate(src.keys("00")):
        sample = src.read(key)
        seq_dir = kitti_root / "sequences/00"
        raw_pts = np.fromfile(seq_dir / f"velodyne/{frame:06d}.bin", dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(sample.points, raw_pts)
        raw = np.fromfile(seq_dir / f"labels/{frame:06d}.label", dtype=np.uint32) & 0xFFFF
        expected = np.array([SEMANTICKITTI_LEARNING_MAP[int(r)] for r in raw], dtype=np.uint8)
        np.testing.assert_array_equal(sample.labels, expected)
        assert sample.meta["label_map"] == "semantickitti-19" and sample.key == key

        p2, tr = calib_matrix(seq_dir / "calib.txt", "P2"), calib_matrix(seq_dir / "calib.txt", "Tr")
        cam = sample.cameras[0]
        assert cam.name == "image_2" and cam.image.dtype == np.uint8 and cam.image.ndim == 3
        np.testing.assert_array_equal(cam.intrinsics, p2[:3, :3])
        ours = cam.intrinsics @ sample.lidar_to_camera(0)[:3]  # (3, 4)
        np.testing.assert_allclose(ours, p2[:3] @ tr, rtol=1e-10, atol=1e-9)
        assert abs(p2[0, 3]) > 1.0  # the generated P2 does carry a baseline term
        pose = np.eye(4)
        pose[:3] = poses[frame]
        np.testing.assert_allclose(sample.ego_to_global, pose @ tr, atol=1e-12)
        assert sample.timestamp == round(frame * 0.5 * 1e6) == cam.timestamp


def test_points_land_on_pixels_of_their_own_class(kitti_root):
    """Projected with P2 / Tr, points fall on pixels of their class in the rendered class map.

    The side outputs are the renderer's per-pixel SemanticKITTI raw ids and camera depth. A
    point counts as visible when the depth map at its pixel is within 5% of the point's own
    depth (else something nearer occludes it, or the pixel centre's ray grazes a different
    surface). Among visible, labelled points at least 97% must agree (99.2-100% observed; the
    rest sit on object silhouettes, where the pixel centre and the point hit different
    surfaces); at least 80% of projected points must be visible, so the check cannot pass
    on a handful of points.
    """
    lut = semantickitti_lookup()
    for split in ("train", "val"):
        src = source(kitti_root, split)
        for key in [k for c in src.chunks() for k in src.keys(c)]:
            sample = src.read(key)
            cam = sample.cameras[0]
            proj = project_points(sample.points[:, :3], sample.lidar_to_camera(0), cam.intrinsics, *cam.size)
            seq, frame = key.split("_")
            classes, depth = read_side_outputs(kitti_root, f"sequences/{seq}/image_2/{frame}.png")
            rows, cols = np.floor(proj.uv[:, 1] + 0.5).astype(int), np.floor(proj.uv[:, 0] + 0.5).astype(int)
            visible = np.abs(depth[rows, cols] - proj.depth) <= 0.05 * proj.depth
            labels = sample.labels[proj.index]
            assert visible.mean() >= 0.8 and len(proj.index) > 300
            keep = visible & (labels > 0)
            agree = lut[classes[rows[keep], cols[keep]]] == labels[keep]
            assert agree.mean() >= 0.97, f"{key}: {agree.mean():.3f} of visible points on their class"


def test_splits_roots_and_split_file(kitti_root, tmp_path):
    assert source(kitti_root, "val").chunks() == ["08"]
    assert source(kitti_root / "sequences", "val").chunks() == ["08"]  # the sequences folder itself
    (tmp_path / "split.txt").write_text("8\n00\n")
    assert source(kitti_root, split_file=str(tmp_path / "split.txt")).chunks() == ["08", "00"]
    (tmp_path / "bad.txt").write_text("05\n")
    with pytest.raises(DatasetLayoutError, match="05"):
        source(kitti_root, split_file=str(tmp_path / "bad.txt"))
    with pytest.raises(DatasetLayoutError, match="no sequences"):
        source(tmp_path)


def test_nuscenes_camera_list_is_ignored_and_unknown_camera_rejected(kitti_root):
    src = source(kitti_root, cameras=["CAM_FRONT", "CAM_BACK"])  # DataConfig.cameras passes through
    assert src.camera_names == ["image_2"]
    with pytest.raises(DatasetLayoutError, match="image_9"):
        from hvdistill.data.sources.semantickitti import SemanticKITTISource

        SemanticKITTISource(kitti_root, cameras=["image_9"])


def test_unlabelled_sequence_and_no_poses(kitti_copy):
    seq_dir = kitti_copy / "sequences/00"
    labelled = source(kitti_copy).read("00_000001")
    shutil.rmtree(seq_dir / "labels")
    (seq_dir / "poses.txt").unlink()
    sample = source(kitti_copy).read("00_000001")
    assert sample.labels is None and sample.meta["label_map"] == ""
    np.testing.assert_array_equal(sample.ego_to_global, np.eye(4))
    np.testing.assert_allclose(sample.lidar_to_camera(0), labelled.lidar_to_camera(0), atol=1e-12)
    cam_from_velodyne = invert_transform(sample.cameras[0].cam_to_ego)
    np.testing.assert_allclose(cam_from_velodyne, sample.lidar_to_camera(0), atol=1e-12)
