"""The SemanticKITTI layout: file dtypes and shapes, calib/poses/times, and image agreement."""

from __future__ import annotations

import numpy as np
import pytest

from hvdistill.config import SynthConfig
from hvdistill.synthetic import read_side_outputs, write_semantickitti

CFG = dict(frames_per_scene=2, image_width=320, image_height=180, seed=2)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return write_semantickitti(
        tmp_path_factory.mktemp("kitti"), SynthConfig(**CFG), side_outputs=True, progress=False
    )


def _calib(path) -> dict[str, np.ndarray]:
    out = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        out[key] = np.array(values.split(), dtype=np.float64).reshape(3, 4)
    return out


def test_files_have_kitti_dtypes_and_shapes(kitti):
    for seq in ("00", "08"):
        d = kitti / "sequences" / seq
        for i in range(2):
            scan = np.fromfile(d / "velodyne" / f"{i:06d}.bin", dtype=np.float32).reshape(-1, 4)
            labels = np.fromfile(d / "labels" / f"{i:06d}.label", dtype=np.uint32)
            assert len(labels) == len(scan) > 20_000
            assert 0 <= scan[:, 3].min() and scan[:, 3].max() <= 1
            sem, inst = labels & 0xFFFF, labels >> 16
            assert set(np.unique(sem)) <= {10, 11, 13, 15, 18, 30, 40, 44, 48, 50, 51, 70, 71, 72, 80, 81, 99}
            assert (inst[np.isin(sem, [40, 48, 50, 70])] == 0).all() and inst[sem == 10].max() > 0
            assert (d / "image_2" / f"{i:06d}.png").exists()
        calib = _calib(d / "calib.txt")
        assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"}
        poses = np.loadtxt(d / "poses.txt").reshape(-1, 3, 4)
        np.testing.assert_allclose(poses[0], np.eye(4)[:3], atol=1e-9)
        # camera 0 looks along z: the ego moves forward, so frame 1 lies ahead along +z
        assert poses[1][2, 3] == pytest.approx(
            SynthConfig().ego_speed_mps * SynthConfig().frame_interval_s, rel=0.05
        )
        np.testing.assert_allclose(np.loadtxt(d / "times.txt"), [0.0, 0.5])


def test_points_project_onto_pixels_of_their_class(kitti):
    d = kitti / "sequences" / "00"
    calib = _calib(d / "calib.txt")
    tr = np.vstack([calib["Tr"], [0, 0, 0, 1]])
    agree, total = 0, 0
    for i in range(2):
        scan = np.fromfile(d / "velodyne" / f"{i:06d}.bin", dtype=np.float32).reshape(-1, 4)
        sem = np.fromfile(d / "labels" / f"{i:06d}.label", dtype=np.uint32) & 0xFFFF
        classes, _ = read_side_outputs(kitti, f"sequences/00/image_2/{i:06d}.png")
        h, w = classes.shape
        uvw = np.hstack([scan[:, :3], np.ones((len(scan), 1))]) @ (calib["P2"] @ tr).T
        z = uvw[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = uvw[:, 0] / z, uvw[:, 1] / z
        keep = (z > 1) & (u > 1) & (u < w - 1) & (v > 1) & (v < h - 1)
        pix = classes[np.floor(v[keep] + 0.5).astype(int), np.floor(u[keep] + 0.5).astype(int)]
        agree += int((pix == sem[keep]).sum())
        total += int(keep.sum())
    assert total > 1000 and agree / total > 0.9, agree / total
