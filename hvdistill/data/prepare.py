"""What sharding computes per sample: stored-resolution images and K, pairs, superpixels.

`prepare_sample` is the single function `sharding/` applies to every sample a source reads,
so a shard holds exactly `prepare_sample(source.read(key), cfg)` (up to JPEG coding of the
images). Pairs are projected at the source's full resolution with the nuscenes-devkit rule
(`hvdistill/geometry/projection.py`: depth > 1 m, 1 px border) and then mapped into the
stored image's pixel grid; SLIC superpixels are computed from the stored image: on a copy reduced
by `data.superpixels.scale` (default 0.5, 400x225 for nuScenes), with the Gaussian sigma given in
source-image pixels as the published code applies it, and the ids taken back to the stored size
by nearest neighbour (docs/method.md, measured in docs/benchmarks.md "Superpixels").

Stored size: each image is resized to fit inside DataConfig.stored_image_width x height with
its aspect ratio kept (nuScenes 1600x900 -> 800x450; SemanticKITTI 1241x376 -> 800x242) and
never enlarged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from skimage.segmentation import slic

from hvdistill.config import DataConfig, SuperpixelConfig
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.geometry.augmentation import resize_intrinsics, resize_matrix, transform_pixels
from hvdistill.geometry.projection import project_points


def stored_size(size: tuple[int, int], cfg: DataConfig) -> tuple[int, int]:
    """(W, H) of the stored image: fit inside the configured box, aspect kept, never enlarged."""
    width, height = size
    scale = min(cfg.stored_image_width / width, cfg.stored_image_height / height, 1.0)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 bilinear (half-pixel centres, as resize_matrix)."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def upsample_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) ids -> (H, W) ids at `size` = (W, H): each pixel takes the id under its centre."""
    height, width = size[1], size[0]
    rows = np.minimum(((np.arange(height) + 0.5) * ids.shape[0] / height).astype(np.intp), ids.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * ids.shape[1] / width).astype(np.intp), ids.shape[1] - 1)
    return ids[rows[:, None], cols[None, :]]


def compute_superpixels(
    image: np.ndarray, cfg: SuperpixelConfig, source_size: tuple[int, int] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int16 SLIC ids starting at cfg.start_label.

    SLIC runs on `image` resized by cfg.scale; cfg.sigma is in pixels of the source image of
    size `source_size` = (W, H) (default: `image` is the source) and is converted to pixels of
    the image SLIC runs on; the ids are brought back to (H, W) with nearest neighbour.
    """
    height, width = image.shape[:2]
    small_size = (max(1, round(width * cfg.scale)), max(1, round(height * cfg.scale)))
    small = resize_image(image, small_size)  # (h, w, 3) uint8
    source_width = width if source_size is None else source_size[0]
    ids = slic(
        small,
        n_segments=cfg.n_segments,
        compactness=cfg.compactness,
        sigma=cfg.sigma * small_size[0] / source_width,
        max_num_iter=cfg.max_num_iter,
        start_label=cfg.start_label,
        channel_axis=-1,
    )  # (h, w)
    if ids.size and int(ids.max()) > np.iinfo(np.int16).max:
        raise ValueError(
            f"SLIC gave superpixel id {int(ids.max())} > {np.iinfo(np.int16).max}; "
            f"lower data.superpixels.n_segments"
        )
    return upsample_nearest(ids.astype(np.int16), (width, height))


def compute_pairs(
    sample: Sample, stored_sizes: list[tuple[int, int]], min_depth: float = 1.0, border: float = 1.0
) -> np.ndarray:
    """(M, 5) float32 point idx, camera idx, row v, col u (stored image), depth (m).

    Projection at each camera's full resolution with the devkit rule, then the whole-image
    resize map takes (u, v) into the stored image's pixel grid.
    """
    rows = []
    for i, cam in enumerate(sample.cameras):
        proj = project_points(
            sample.points[:, :3],
            sample.lidar_to_camera(i),
            cam.intrinsics,
            cam.size[0],
            cam.size[1],
            min_depth=min_depth,
            border=border,
        )
        uv = transform_pixels(resize_matrix(cam.size, stored_sizes[i]), proj.uv)  # (M_i, 2)
        block = np.empty((len(proj.index), 5), dtype=np.float64)
        block[:, 0] = proj.index
        block[:, 1] = i
        block[:, 2] = uv[:, 1]
        block[:, 3] = uv[:, 0]
        block[:, 4] = proj.depth
        rows.append(block)
    if not rows:
        return np.zeros((0, 5), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32)


def prepare_camera(cam: CameraFrame, size: tuple[int, int], cfg: DataConfig) -> CameraFrame:
    """Resize one camera to `size`, rescale its K, and compute its superpixels."""
    image = resize_image(cam.image, size)  # (H', W', 3) uint8
    return dataclasses.replace(
        cam,
        image=image,
        intrinsics=resize_intrinsics(cam.intrinsics, cam.size, size),
        superpixels=compute_superpixels(image, cfg.superpixels, source_size=cam.size),
    )


def prepare_sample(sample: Sample, cfg: DataConfig) -> Sample:
    """Full-resolution sample from a source -> the sample as shards store it."""
    sizes = [stored_size(c.size, cfg) for c in sample.cameras]
    pairs = compute_pairs(sample, sizes, cfg.min_depth, cfg.image_border)
    cameras = [prepare_camera(c, s, cfg) for c, s in zip(sample.cameras, sizes)]
    return dataclasses.replace(
        sample,
        points=np.ascontiguousarray(sample.points, dtype=np.float32),
        labels=None if sample.labels is None else np.asarray(sample.labels, dtype=np.uint8),
        cameras=cameras,
        pairs=pairs,
    )
