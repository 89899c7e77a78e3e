"""Augmentation matrices: known answers, and agreement with real image resampling."""

import numpy as np
import torch
import torch.nn.functional as F

from hvdistill.geometry.augmentation import (
    image_augmentation_matrix,
    lidar_augmentation_matrix,
    resize_intrinsics,
    resize_matrix,
    transform_pixels,
)


def test_lidar_matrix_order_flip_rotate_scale_translate():
    m = lidar_augmentation_matrix(yaw=np.pi / 2, scale=2.0, translation=(1, 2, 3), flip_x=True)
    p = m @ np.array([1.0, 0.0, 0.0, 1.0])
    # flip x -> (-1, 0, 0); rotate 90 -> (0, -1, 0); scale -> (0, -2, 0); translate
    np.testing.assert_allclose(p[:3], [1.0, 0.0, 3.0], atol=1e-12)


def test_image_matrix_pixel_centres_crop_resize_flip():
    a = image_augmentation_matrix((10, 20, 100, 50), (200, 100))
    # left edge of the crop (u = 9.5 in pixel-centre coordinates) maps to the output's -0.5
    np.testing.assert_allclose(transform_pixels(a, np.array([[9.5, 19.5]])), [[-0.5, -0.5]])
    np.testing.assert_allclose(transform_pixels(a, np.array([[109.5, 69.5]])), [[199.5, 99.5]])
    f = image_augmentation_matrix((10, 20, 100, 50), (200, 100), flip=True)
    np.testing.assert_allclose(transform_pixels(f, np.array([[9.5, 19.5]])), [[199.5, -0.5]])


def test_image_matrix_matches_torch_interpolate_on_a_bright_pixel():
    """Resample an image with one bright pixel; its mass centre moves as the matrix says."""
    img = torch.zeros(1, 1, 90, 160, dtype=torch.float64)
    img[0, 0, 40, 70] = 1.0
    x0, y0, w, h, out = 30, 10, 120, 60, (240, 120)
    crop = img[..., y0 : y0 + h, x0 : x0 + w]
    res = F.interpolate(crop, size=(out[1], out[0]), mode="bilinear", align_corners=False)[0, 0]
    vv, uu = torch.meshgrid(torch.arange(out[1]), torch.arange(out[0]), indexing="ij")
    centre = [(res * uu).sum() / res.sum(), (res * vv).sum() / res.sum()]
    a = image_augmentation_matrix((x0, y0, w, h), out)
    np.testing.assert_allclose(transform_pixels(a, np.array([[70.0, 40.0]]))[0], centre, atol=1e-6)
    flipped = torch.flip(res, dims=[1])
    centre_f = (flipped * uu).sum() / flipped.sum()
    af = image_augmentation_matrix((x0, y0, w, h), out, flip=True)
    np.testing.assert_allclose(transform_pixels(af, np.array([[70.0, 40.0]]))[0, 0], centre_f, atol=1e-6)


def test_resized_intrinsics_project_consistently():
    k = np.array([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    k2 = resize_intrinsics(k, (1600, 900), (800, 450))
    p = np.array([3.0, -1.0, 12.0])
    uv_full = (k @ p)[:2] / p[2]
    uv_small = (k2 @ p)[:2] / p[2]
    np.testing.assert_allclose(
        transform_pixels(resize_matrix((1600, 900), (800, 450)), uv_full[None])[0], uv_small
    )
