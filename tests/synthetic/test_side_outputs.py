"""The surface-normal side output: encoding round trip, and its values in both dataset layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hvdistill.synthetic.side_outputs import (
    decode_normals,
    encode_normals,
    normal_map_path,
    read_normal_map,
    read_side_outputs,
    write_side_outputs,
)
from tests.helpers.world import NUSCENES_VERSION, tiny_synth_config

KITTI_ROAD, NUSCENES_DRIVEABLE = 40, 24  # raw SemanticKITTI id / nuScenes-lidarseg index of the road
UP_TOLERANCE_DEG = 2.0  # the cameras are level: the road's normal is the camera's -y
QUANTISATION_DEG = 0.5  # 8 bits per component


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def test_encoding_round_trips_within_the_quantisation_and_keeps_no_surface():
    rng = np.random.default_rng(0)
    n = rng.standard_normal((8, 9, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, :3] = 0.0  # no surface
    rgb = encode_normals(n)
    assert rgb.dtype == np.uint8 and (rgb[0, :3] == 0).all() and rgb[1:].any(axis=-1).all()
    back = decode_normals(rgb)
    assert (back[0, :3] == 0).all()
    assert _angle_deg(back[1:], n[1:]).max() < QUANTISATION_DEG


def test_write_and_read_back(tmp_path):
    normals = np.zeros((4, 5, 3), np.float32)
    normals[2:] = (0.0, -1.0, 0.0)
    write_side_outputs(tmp_path, "cam/x.jpg", np.zeros((4, 5)), np.ones((4, 5)), normals)
    assert normal_map_path(tmp_path, "cam/x.jpg") == tmp_path / "side_outputs/cam/x_normal.png"
    back = read_normal_map(tmp_path, "cam/x.jpg")
    assert back.shape == (4, 5, 3) and (back[:2] == 0).all()
    assert _angle_deg(back[2:], normals[2:]).max() < QUANTISATION_DEG


def _check_normals(root: Path, relpath: str, road_id: int) -> None:
    """Unit where something was hit, 0 on sky; the road points up (camera -y)."""
    classes, _ = read_side_outputs(root, relpath)
    normals = read_normal_map(root, relpath)  # (H, W, 3)
    assert normals.shape == (*classes.shape, 3)
    surface = normals.any(axis=-1)
    np.testing.assert_array_equal(surface, classes > 0)
    np.testing.assert_allclose(np.linalg.norm(normals[surface], axis=-1), 1.0, atol=1e-5)
    road = classes == road_id
    assert road.sum() > 20
    assert _angle_deg(normals[road], np.array([0.0, -1.0, 0.0])).max() < UP_TOLERANCE_DEG


def test_semantickitti_normals_face_the_camera_and_the_road_points_up(kitti_root):
    for seq in ("00", "08"):
        rel = f"sequences/{seq}/image_2/000000.png"
        _check_normals(kitti_root, rel, KITTI_ROAD)
        p2 = np.array(
            (kitti_root / f"sequences/{seq}/calib.txt").read_text().split("P2:")[1].split()[:12], float
        )
        k_inv = np.linalg.inv(p2.reshape(3, 4)[:, :3])
        normals = read_normal_map(kitti_root, rel)
        h, w = normals.shape[:2]
        v, u = np.mgrid[0:h, 0:w] + 0.5
        rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ k_inv.T  # (H, W, 3) camera frame
        surface = normals.any(axis=-1)
        assert ((normals * rays).sum(-1)[surface] <= 1e-3).all()  # seen from the front


@pytest.fixture(scope="module")
def nuscenes_side(tmp_path_factory) -> Path:
    from hvdistill.synthetic import write_nuscenes

    cfg = tiny_synth_config(scenes=1, frames=1, image_width=96, image_height=54)
    out = tmp_path_factory.mktemp("nuscenes-side")
    return Path(write_nuscenes(out, cfg, version=NUSCENES_VERSION, side_outputs=True, progress=False))


def test_nuscenes_every_camera_has_its_normal_map(nuscenes_side):
    images = sorted((nuscenes_side / "samples").glob("CAM_*/*.jpg"))
    assert len(images) == 6
    for image in images:
        rel = image.relative_to(nuscenes_side)
        assert normal_map_path(nuscenes_side, rel).is_file()
    front = next(i for i in images if i.parent.name == "CAM_FRONT")
    _check_normals(nuscenes_side, str(front.relative_to(nuscenes_side)), NUSCENES_DRIVEABLE)
