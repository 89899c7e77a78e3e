"""prepare_sample: stored-size images and K, devkit-rule pairs in stored pixels, SLIC superpixels."""

import numpy as np
import pytest
from skimage.segmentation import slic

from hvdistill.config import Config, DataConfig, SuperpixelConfig, problems
from hvdistill.data.prepare import (
    compute_superpixels,
    prepare_sample,
    resize_image,
    stored_size,
    upsample_nearest,
)
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.geometry.augmentation import resize_intrinsics
from hvdistill.geometry.projection import project_points

# camera x right -> ego -y, camera y down -> ego -z, camera z forward -> ego x
CAM_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_sample(width: int = 320, height: int = 180, n_points: int = 3000, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    points = np.column_stack(
        [
            rng.uniform(-5, 40, n_points),
            rng.uniform(-15, 15, n_points),
            rng.uniform(-2, 2, n_points),
            rng.uniform(0, 1, n_points),
        ]
    )
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx // 40 + yy // 40) % 2 * 200], -1)
    k = np.array([[width * 0.8, 0, width / 2], [0, width * 0.8, height / 2], [0, 0, 1.0]])
    cam_to_ego = np.eye(4)
    cam_to_ego[:3, :3] = CAM_ROTATION
    cam_to_ego[:3, 3] = [1.5, 0.0, 1.6]
    lidar_to_ego = np.eye(4)
    lidar_to_ego[:3, 3] = [0.9, 0.0, 1.8]
    pose = np.eye(4)
    pose[:3, 3] = [100.0, 50.0, 0.0]
    pose_cam = pose.copy()
    pose_cam[0, 3] += 0.2  # the ego moved between the LiDAR and camera timestamps
    cam = CameraFrame("CAM_FRONT", image.astype(np.uint8), k, cam_to_ego, pose_cam, 1_000_020, "tok")
    return Sample(
        "abc123",
        "nuscenes",
        points.astype(np.float32),
        lidar_to_ego,
        pose,
        [cam],
        labels=rng.integers(0, 17, n_points).astype(np.uint8),
        timestamp=1_000_000,
        meta={"scene": "scene-0001"},
    )


def test_stored_size_keeps_aspect_and_never_enlarges():
    cfg = DataConfig()
    assert stored_size((1600, 900), cfg) == (800, 450)
    assert stored_size((1241, 376), cfg) == (800, 242)
    assert stored_size((320, 180), cfg) == (320, 180)


def test_prepare_resizes_image_and_intrinsics():
    sample = make_sample(640, 360)
    cfg = DataConfig(stored_image_width=320, stored_image_height=180)
    out = prepare_sample(sample, cfg)
    cam = out.cameras[0]
    assert cam.image.shape == (180, 320, 3) and cam.image.dtype == np.uint8
    np.testing.assert_allclose(
        cam.intrinsics, resize_intrinsics(sample.cameras[0].intrinsics, (640, 360), (320, 180))
    )
    assert cam.intrinsics[0, 0] == pytest.approx(sample.cameras[0].intrinsics[0, 0] / 2)
    assert sample.cameras[0].image.shape == (360, 640, 3)  # input untouched


def test_pairs_follow_full_resolution_projection_in_stored_pixels():
    sample = make_sample(640, 360)
    cfg = DataConfig(stored_image_width=320, stored_image_height=180)
    out = prepare_sample(sample, cfg)
    full = project_points(sample.points, sample.lidar_to_camera(0), sample.cameras[0].intrinsics, 640, 360)
    pairs = out.pairs
    assert pairs.dtype == np.float32 and pairs.shape == (len(full.index), 5)
    assert len(full.index) > 100
    np.testing.assert_array_equal(pairs[:, 0], full.index)
    np.testing.assert_array_equal(pairs[:, 1], 0)
    np.testing.assert_allclose(pairs[:, 4], full.depth, rtol=1e-6)
    # same points projected with the stored image's K land on the stored (u, v) of the pairs
    stored = project_points(
        sample.points, sample.lidar_to_camera(0), out.cameras[0].intrinsics, 320, 180, border=-10.0
    )
    lookup = dict(zip(stored.index.tolist(), stored.uv.tolist()))
    uv = np.array([lookup[int(i)] for i in pairs[:, 0]])
    np.testing.assert_allclose(pairs[:, 3], uv[:, 0], atol=1e-3)  # column u
    np.testing.assert_allclose(pairs[:, 2], uv[:, 1], atol=1e-3)  # row v
    assert (pairs[:, 3] > 0).all() and (pairs[:, 3] < 320).all()
    assert (pairs[:, 2] > 0).all() and (pairs[:, 2] < 180).all()


def test_superpixels_are_slic_of_the_stored_image():
    sample = make_sample(640, 360)
    cfg = DataConfig(stored_image_width=320, stored_image_height=180)
    out = prepare_sample(sample, cfg)
    sp = out.cameras[0].superpixels
    assert sp.shape == (180, 320) and sp.dtype == np.int16
    expected = compute_superpixels(out.cameras[0].image, cfg.superpixels, source_size=(640, 360))
    np.testing.assert_array_equal(sp, expected)
    assert sp.min() == 0 and 20 < sp.max() < 300


def test_scale_one_is_plain_slic_with_sigma_in_source_pixels():
    """scale=1.0 reproduces scikit-image's SLIC of the stored image exactly (the pre-scale default)."""
    image = make_sample(320, 180).cameras[0].image
    cfg = SuperpixelConfig(scale=1.0, sigma=6.0)  # 6 px at 640 wide = 3 px at 320 wide
    ids = compute_superpixels(image, cfg, source_size=(640, 360))
    plain = slic(image, n_segments=150, compactness=6.0, sigma=3.0, start_label=0, channel_axis=-1)
    np.testing.assert_array_equal(ids, plain)


def test_reduced_slic_keeps_the_stored_size_and_consecutive_ids():
    image = make_sample(320, 180).cameras[0].image
    ids = compute_superpixels(image, SuperpixelConfig(scale=0.5), source_size=(640, 360))
    assert ids.shape == (180, 320) and ids.dtype == np.int16
    half = slic(
        resize_image(image, (160, 90)),
        n_segments=150,
        compactness=6.0,
        sigma=0.75,
        start_label=0,
        channel_axis=-1,
    )  # sigma 3 source px at 1/4 of 640
    np.testing.assert_array_equal(ids, np.repeat(np.repeat(half, 2, axis=0), 2, axis=1))
    assert np.array_equal(np.unique(ids), np.arange(int(ids.max()) + 1))
    shifted = compute_superpixels(image, SuperpixelConfig(scale=0.5, start_label=1), source_size=(640, 360))
    assert shifted.min() == 1


def test_upsample_nearest_takes_the_id_under_each_pixel_centre():
    ids = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(upsample_nearest(ids, (6, 4)), np.repeat(np.repeat(ids, 2, 0), 2, 1))
    odd = upsample_nearest(ids, (7, 5))  # non-integer factors: every id still present, in order
    assert odd.shape == (5, 7) and set(np.unique(odd)) == set(range(6))
    assert (np.diff(odd, axis=1) >= 0).all() and (np.diff(odd, axis=0) >= 0).all()
    np.testing.assert_array_equal(upsample_nearest(ids, (3, 2)), ids)


@pytest.mark.parametrize(
    ("field", "value"), [("scale", 0.0), ("scale", 1.5), ("max_num_iter", 0), ("sigma", -1.0)]
)
def test_superpixel_settings_out_of_range_are_refused(field, value):
    cfg = Config()
    setattr(cfg.data.superpixels, field, value)
    assert any(f"data.superpixels.{field}" in p for p in problems(cfg))


def test_prepare_is_deterministic():
    cfg = DataConfig(stored_image_width=160, stored_image_height=90)
    a, b = prepare_sample(make_sample(), cfg), prepare_sample(make_sample(), cfg)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.cameras[0].superpixels, b.cameras[0].superpixels)
    np.testing.assert_array_equal(a.cameras[0].image, b.cameras[0].image)
