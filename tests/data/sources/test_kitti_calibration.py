"""SemanticKITTI calib.txt in Sample terms: K @ lidar_to_camera reproduces P2 @ Tr exactly."""

import numpy as np
import pytest

from hvdistill.data.errors import SampleReadError
from hvdistill.data.sources.semantickitti import camera_calibration, read_calibration
from hvdistill.geometry.transforms import invert_transform, make_transform, yaw_rotation

# Sequence 00's published P2 and a Tr of the same kind (velodyne -> camera 0 axes swap + offset).
P2 = np.array(
    [[718.856, 0.0, 607.1928, 45.38225], [0.0, 718.856, 185.2157, -0.1130887], [0.0, 0.0, 1.0, 0.003779761]]
)
AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # velodyne -> camera axes


def write_calib(path, p2=P2, tr=None):
    tr = make_transform(AXES @ yaw_rotation(0.01), [-0.004, -0.076, -0.27]) if tr is None else tr
    rows = {"P0": P2 * [1, 1, 1, 0], "P1": P2, "P2": p2, "P3": P2, "Tr": tr[:3]}
    lines = [f"{k}: " + " ".join(f"{v:.12e}" for v in np.ravel(m)) for k, m in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return tr


def test_projection_equals_p2_times_tr(tmp_path):
    tr = write_calib(tmp_path / "calib.txt")
    calib = read_calibration("00_000000", tmp_path / "calib.txt")
    k, cam_to_velo = camera_calibration("00_000000", tmp_path / "calib.txt", calib, "image_2")
    np.testing.assert_array_equal(k, P2[:, :3])
    velo_to_cam = invert_transform(cam_to_velo)
    pts = np.random.default_rng(0).uniform([-40, -40, -3], [40, 40, 3], size=(500, 3))
    homo = np.c_[pts, np.ones(len(pts))]
    ours = (k @ (homo @ velo_to_cam.T)[:, :3].T).T  # (N, 3) homogeneous pixels
    reference = (P2 @ tr @ homo.T).T  # (N, 3)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "line",
    [
        "P2: 1 2 3",
        "P2: 1 2 3 4 5 6 7 8 9 10 11 x",
        "P2 1 2 3 4 5 6 7 8 9 10 11 12",
        "P2: 1 2 3 4 5 6 7 8 9 10 11 nan",
    ],
)
def test_malformed_calibration_line_raises_naming_the_file(tmp_path, line):
    write_calib(tmp_path / "calib.txt")
    text = (tmp_path / "calib.txt").read_text().splitlines()
    text[2] = line
    (tmp_path / "calib.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(SampleReadError) as err:
        read_calibration("00_000007", tmp_path / "calib.txt")
    assert err.value.key == "00_000007" and err.value.path.endswith("calib.txt")
    assert "line 3" in err.value.reason


def test_missing_entry_and_singular_matrix_raise(tmp_path):
    write_calib(tmp_path / "calib.txt", p2=np.zeros((3, 4)))
    calib = read_calibration("00_000001", tmp_path / "calib.txt")
    with pytest.raises(SampleReadError, match="singular"):
        camera_calibration("00_000001", tmp_path / "calib.txt", calib, "image_2")
    del calib["Tr"]
    with pytest.raises(SampleReadError, match="'Tr:'"):
        camera_calibration("00_000001", tmp_path / "calib.txt", calib, "image_3")
