"""Joint augmentation keeps every correspondence consistent and records exact matrices."""

import numpy as np
import pytest

from hvdistill.config import AugmentConfig, GeometryConfig
from hvdistill.data.augment import augment_sample, sample_crop_box
from hvdistill.data.intensity import COMMON_SCALE
from hvdistill.geometry.augmentation import transform_pixels
from tests.helpers.memory_sample import make_sample

GEO = GeometryConfig()


def reproject(aug, sample):
    """Project each pair's augmented point back through the recorded matrices."""
    idx = aug.pairs[:, 0].astype(np.int64)
    cam = aug.pairs[:, 1].astype(np.int64)
    xyz = aug.points[idx, :3].astype(np.float64)
    un = (xyz - aug.lidar_aug[:3, 3]) @ np.linalg.inv(aug.lidar_aug[:3, :3]).T
    uv, depth = np.zeros((len(idx), 2)), np.zeros(len(idx))
    for i in range(len(sample.cameras)):
        m = cam == i
        c = un[m] @ sample.lidar_to_camera(i)[:3, :3].T + sample.lidar_to_camera(i)[:3, 3]
        depth[m] = c[:, 2]
        uv[m] = transform_pixels(aug.image_aug[i], (c @ aug.intrinsics[i].T)[:, :2] / c[:, 2:3])
    return uv, depth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_follow_the_recorded_matrices(seed):
    sample = make_sample(seed)
    aug = augment_sample(sample, AugmentConfig(), GEO, np.random.default_rng(seed))
    assert aug.images.shape == (2, 3, 224, 416) and aug.superpixels.shape == (2, 224, 416)
    uv, depth = reproject(aug, sample)
    # points are stored float32 after augmentation: ~1e-5 m error -> well under 0.01 px here
    np.testing.assert_allclose(uv, aug.pairs[:, [3, 2]], atol=2e-2)
    np.testing.assert_allclose(depth, aug.pairs[:, 4], atol=1e-3)
    pix = np.floor(aug.pairs[:, [3, 2]] + 0.5)
    assert np.all((pix >= 0) & (pix < [416, 224]))
    assert not np.allclose(aug.lidar_aug, np.eye(4))


def test_superpixel_under_each_pair_matches_the_source():
    sample = make_sample(3, block=40)
    aug = augment_sample(sample, AugmentConfig(), GEO, np.random.default_rng(3))
    orig = make_sample(3, block=40)
    agree = total = 0
    cam = aug.pairs[:, 1].astype(np.int64)
    for i in range(2):
        p = aug.pairs[cam == i]
        crop_px = np.floor(p[:, [3, 2]] + 0.5).astype(np.int64)
        sp_crop = aug.superpixels[i][crop_px[:, 1], crop_px[:, 0]]
        src_uv = transform_pixels(np.linalg.inv(aug.image_aug[i]), p[:, [3, 2]])
        src_px = np.clip(np.floor(src_uv + 0.5).astype(np.int64), 0, [479, 269])
        sp_src = orig.cameras[i].superpixels[src_px[:, 1], src_px[:, 0]]
        agree += int((sp_crop == sp_src).sum())
        total += len(p)
    assert total > 1000 and agree / total > 0.9  # disagreements only at superpixel edges


def test_disabled_augmentation_is_identity_on_the_cloud():
    sample = make_sample(4)
    aug = augment_sample(sample, AugmentConfig(enabled=False), GEO, np.random.default_rng(0))
    np.testing.assert_array_equal(aug.points[:, :3], sample.points[:, :3])
    assert sample.dataset == "nuscenes"  # nuScenes intensities reach the network bit for bit
    np.testing.assert_array_equal(aug.points[:, 3], sample.points[:, 3])
    np.testing.assert_allclose(aug.lidar_aug, np.eye(4))


def test_intensity_reaches_the_network_on_0_255_whatever_the_dataset_stores():
    sample = make_sample(4)
    for dataset, stored in (("nuscenes", 255.0), ("argoverse2", 255.0), ("semantickitti", 1.0)):
        sample.dataset = dataset
        sample.points[:, 3] = stored  # the top of the format's scale
        aug = augment_sample(sample, AugmentConfig(enabled=False), GEO, np.random.default_rng(0))
        np.testing.assert_allclose(aug.points[:, 3], COMMON_SCALE)
    sample.dataset = "unknown"
    with pytest.raises(ValueError, match="no intensity scale for dataset 'unknown'"):
        augment_sample(sample, AugmentConfig(enabled=False), GEO, np.random.default_rng(0))


def test_crop_box_respects_area_and_aspect():
    cfg, rng = AugmentConfig(), np.random.default_rng(0)
    for _ in range(200):
        x0, y0, w, h = sample_crop_box(800, 450, cfg, rng)
        assert 0 <= x0 and x0 + w <= 800 and 0 <= y0 and y0 + h <= 450
        if (w, h) != (800, 450):
            assert 0.29 <= w * h / (800 * 450) <= 1.01 and 14 / 9 - 0.05 <= w / h <= 17 / 9 + 0.05


def test_missing_pairs_is_a_clear_error():
    sample = make_sample(5)
    sample.pairs = None
    with pytest.raises(ValueError, match="prepare_sample"):
        augment_sample(sample, AugmentConfig(), GEO, np.random.default_rng(0))
