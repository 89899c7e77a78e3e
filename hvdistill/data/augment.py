"""Joint LiDAR + image augmentations that keep every point-pixel correspondence consistent.

Input: a prepared `Sample` (stored-resolution images, superpixels, pairs; see
hvdistill/data/prepare.py). Output: an `AugmentedSample` holding the augmented cloud, per
camera the 224 x 416 crop, its superpixel crop and the matrix of its image augmentation, the
surviving pairs in crop pixels, and the composed LiDAR augmentation matrix. Geometry that
needs to be undone later (the BEV lift) uses exactly these recorded matrices, built by
hvdistill/geometry/augmentation.py (pixel u = column, v = row, integers at pixel centres).

Order (SLidR / HVDistill): cloud augmentation (flip, yaw, scale, translation), DropCuboids
(rejected if a camera would keep fewer than `min_pairs_per_camera` pairs), then per camera a
random resized crop (resampled until enough pairs survive) and a horizontal flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hvdistill.config import AugmentConfig, GeometryConfig
from hvdistill.data.intensity import normalised_intensity
from hvdistill.data.sample import Sample
from hvdistill.geometry.augmentation import (
    image_augmentation_matrix,
    lidar_augmentation_matrix,
    transform_pixels,
)


@dataclass
class AugmentedSample:
    points: np.ndarray  # (N, 4) float32: augmented x, y, z and intensity on 0-255 (data/intensity.py)
    labels: np.ndarray | None  # (N,) uint8
    lidar_aug: np.ndarray  # (4, 4) float64 un-augmented -> augmented LiDAR frame
    images: np.ndarray  # (n_cam, 3, Hc, Wc) float32 RGB in [0, 1]
    superpixels: np.ndarray  # (n_cam, Hc, Wc) int64, -1 = none
    image_aug: np.ndarray  # (n_cam, 3, 3) float64 stored-image px -> crop px
    intrinsics: np.ndarray  # (n_cam, 3, 3) float64 of the stored image
    camera_to_lidar: np.ndarray  # (n_cam, 4, 4) float64 camera -> un-augmented LiDAR
    pairs: np.ndarray  # (M, 5) float64: point idx, cam idx, v (row), u (col) in crop px, depth
    key: str = ""


def augment_cloud(
    points: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, yaw, scale and translation; returns (augmented (N, 4), matrix (4, 4))."""
    if not cfg.enabled:
        return points.copy(), np.eye(4)
    m = lidar_augmentation_matrix(
        yaw=math.radians(rng.uniform(-cfg.yaw_deg, cfg.yaw_deg)),
        scale=rng.uniform(*cfg.scale_range),
        translation=tuple(rng.normal(0.0, cfg.translate_std, size=3)),
        flip_x=bool(rng.random() < cfg.flip_x_p),
        flip_y=bool(rng.random() < cfg.flip_y_p),
    )
    out = points.copy()
    out[:, :3] = (points[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
    return out, m


def drop_cuboid(
    points: np.ndarray, pairs: np.ndarray, n_cam: int, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Boolean keep-mask (N,) of points outside a random cuboid; all-True if a camera would
    keep fewer than `min_pairs_per_camera` pairs (the augmentation is then rejected)."""
    keep = np.ones(len(points), dtype=bool)
    if not (cfg.enabled and cfg.drop_cuboids) or len(points) == 0:
        return keep
    xyz = points[:, :3]
    half = (xyz.max(0) - xyz.min(0)) * rng.random() * cfg.drop_cuboid_max_fraction / 2.0
    centre = xyz[rng.integers(len(xyz))]
    inside = np.all((xyz > centre - half) & (xyz < centre + half), axis=1)
    kept_pairs = pairs[~inside[pairs[:, 0].astype(np.int64)]]
    per_cam = np.bincount(kept_pairs[:, 1].astype(np.int64), minlength=n_cam)
    had = np.bincount(pairs[:, 1].astype(np.int64), minlength=n_cam)
    if np.any((per_cam < cfg.min_pairs_per_camera) & (had >= cfg.min_pairs_per_camera)):
        return keep
    return ~inside


def sample_crop_box(
    width: int, height: int, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (x0, y0, w, h) in integer pixels (torchvision's sampling rule)."""
    area = width * height
    log_ratio = (math.log(cfg.crop_aspect[0]), math.log(cfg.crop_aspect[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    return 0, 0, width, height  # fallback: the whole image


def _pairs_in_crop(
    uv: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map (M, 2) uv through `matrix`; return (mapped uv, mask of those whose pixel is inside)."""
    uv2 = transform_pixels(matrix, uv)
    pix = np.floor(uv2 + 0.5)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < out_w) & (pix[:, 1] >= 0) & (pix[:, 1] < out_h)
    return uv2, inside


def choose_crop(
    uv: np.ndarray, width: int, height: int, cfg: AugmentConfig, geo: GeometryConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int], bool]:
    """Resample crops until > min pairs or > min kept fraction survive; then maybe h-flip."""
    out = (geo.crop_width, geo.crop_height)
    if not cfg.enabled:
        box = (0, 0, width, height)
        m = image_augmentation_matrix(box, out)
        return (m, *_pairs_in_crop(uv, m, *out), box, False)
    need = min(cfg.min_pairs_per_camera, len(uv))
    for _ in range(cfg.crop_max_tries):
        box = sample_crop_box(width, height, cfg, rng)
        m = image_augmentation_matrix(box, out)
        uv2, inside = _pairs_in_crop(uv, m, *out)
        if not len(uv) or inside.sum() > need or inside.mean() > cfg.crop_min_kept_fraction:
            break
    flip = bool(rng.random() < cfg.hflip_p)
    m = image_augmentation_matrix(box, out, flip=flip)
    uv2, inside = _pairs_in_crop(uv, m, *out)
    return m, uv2, inside, box, flip


def crop_resize(
    image: np.ndarray,
    superpixels: np.ndarray,
    box: tuple[int, int, int, int],
    out_w: int,
    out_h: int,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image crop (3, out_h, out_w) in [0, 1] and nearest superpixel crop (out_h, out_w)."""
    x0, y0, w, h = box
    crop = np.require(image[y0 : y0 + h, x0 : x0 + w], requirements=["C", "W"])  # copies only when needed
    img = torch.from_numpy(crop).permute(2, 0, 1)  # (3, h, w) uint8; decoded shard arrays are read-only
    img = F.interpolate(img[None].float() / 255.0, size=(out_h, out_w), mode="bilinear", align_corners=False)[
        0
    ]
    sp = torch.from_numpy(superpixels[y0 : y0 + h, x0 : x0 + w].astype(np.float32))[None, None]
    sp = F.interpolate(sp, size=(out_h, out_w), mode="nearest-exact")[0, 0]
    if flip:
        img, sp = img.flip(-1), sp.flip(-1)
    return img.clamp_(0.0, 1.0).numpy(), sp.numpy().astype(np.int64)


def augment_sample(
    sample: Sample, cfg: AugmentConfig, geo: GeometryConfig, rng: np.random.Generator
) -> AugmentedSample:
    """Apply the whole joint augmentation to a prepared sample (pairs and superpixels present)."""
    if sample.pairs is None or any(c.superpixels is None for c in sample.cameras):
        raise ValueError(
            f"sample {sample.key}: augmentation needs pairs and superpixels (run prepare_sample)"
        )
    n_cam = len(sample.cameras)
    # intensity on 0-255 whatever the dataset stores (hvdistill/data/intensity.py)
    points, lidar_aug = augment_cloud(normalised_intensity(sample.points, sample.dataset), cfg, rng)
    pairs = sample.pairs.astype(np.float64)
    keep_pts = drop_cuboid(points, pairs, n_cam, cfg, rng)
    pairs = pairs[keep_pts[pairs[:, 0].astype(np.int64)]]
    images, sps, mats, out_pairs = [], [], [], []
    for i, cam in enumerate(sample.cameras):
        cam_pairs = pairs[pairs[:, 1] == i]
        uv = cam_pairs[:, [3, 2]]  # (M, 2) u, v
        m, uv2, inside, box, flip = choose_crop(uv, *cam.size, cfg, geo, rng)
        img, sp = crop_resize(cam.image, cam.superpixels, box, geo.crop_width, geo.crop_height, flip)
        images.append(img)
        sps.append(sp)
        mats.append(m)
        kept = cam_pairs[inside].copy()
        kept[:, 2], kept[:, 3] = uv2[inside, 1], uv2[inside, 0]
        out_pairs.append(kept)
    index_map = np.cumsum(keep_pts) - 1  # old point index -> new index
    all_pairs = np.concatenate(out_pairs, 0) if out_pairs else np.zeros((0, 5))
    all_pairs[:, 0] = index_map[all_pairs[:, 0].astype(np.int64)]
    return AugmentedSample(
        points=points[keep_pts],
        labels=None if sample.labels is None else sample.labels[keep_pts],
        lidar_aug=lidar_aug,
        images=np.stack(images),
        superpixels=np.stack(sps),
        image_aug=np.stack(mats),
        intrinsics=np.stack([c.intrinsics for c in sample.cameras]),
        camera_to_lidar=np.stack([sample.camera_to_lidar(i) for i in range(n_cam)]),
        pairs=all_pairs,
        key=sample.key,
    )
