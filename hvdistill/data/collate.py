"""Collate augmented samples into one `Batch`: the one place that builds the voxel layout.

Each sample's augmented cloud is voxelised (hvdistill/geometry/voxel.py; points outside the
crop are dropped and pairs re-indexed; pairs of dropped points are kept apart as depth-only
pairs, since the depth loss needs no 3D feature), voxel coordinates are written in spconv's
(batch, z, y, x) order with spatial shape [Z, Y, X], points are offset-batched, images of all
samples and cameras are stacked (image index = sample * n_cam + camera), and superpixel ids
are made unique across the batch so pooling can use them directly. Samples may carry
different numbers of cameras (mixed datasets): image indices are running offsets, and
`Batch.image_sample` names the sample of every image.
"""

from __future__ import annotations

import numpy as np
import torch

from hvdistill.batch import Batch
from hvdistill.config import GeometryConfig
from hvdistill.data.augment import AugmentedSample
from hvdistill.geometry.voxel import voxelize


def _unique_superpixels(sp: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """Shift non-negative ids of one image by `offset`; return (ids, next offset)."""
    valid = sp >= 0
    out = np.where(valid, sp + offset, -1)
    top = int(sp[valid].max()) + 1 if valid.any() else 0
    return out, offset + top


def _split_pairs(pairs: np.ndarray, new_index: np.ndarray, point_offset: int, image_offset: int):
    """In-crop pairs re-indexed to the batch's points, and depth-only pairs (point outside the
    voxel crop, still a valid depth target up to geometry.depth_max)."""
    mapped = new_index[pairs[:, 0].astype(np.int64)]  # (M,) -1 outside the crop
    ok = mapped >= 0
    image = pairs[:, 1].astype(np.int64) + image_offset  # (M,)
    uv = pairs[:, [3, 2]].astype(np.float32)  # (M, 2) u, v
    depth = pairs[:, 4].astype(np.float32)  # (M,)
    return (mapped[ok] + point_offset, image[ok], uv[ok], depth[ok]), (image[~ok], uv[~ok], depth[~ok])


def collate(samples: list[AugmentedSample], geo: GeometryConfig) -> Batch:
    """Stack `samples` into a Batch (see hvdistill/batch.py for every field's shape)."""
    image_offset = 0
    image_sample = []
    pts, pbatch, coords, feats, p2v, labels = [], [], [], [], [], []
    in_crop: list[tuple] = []  # per sample: (point, image, uv, depth) of pairs inside the crop
    depth_only: list[tuple] = []  # per sample: (image, uv, depth) of pairs outside it
    sps = []
    point_offset = voxel_offset = sp_offset = 0
    spatial_shape = None
    for b, s in enumerate(samples):
        vox = voxelize(s.points, geo.voxel_size, geo.point_range)
        spatial_shape = [vox.spatial_shape[2], vox.spatial_shape[1], vox.spatial_shape[0]]  # Z, Y, X
        kept_pts = s.points[vox.point_index]  # (P_b, 4) in-range points
        pts.append(kept_pts)
        pbatch.append(np.full(len(kept_pts), b, dtype=np.int64))
        c = vox.coords  # (V_b, 3) ix, iy, iz
        coords.append(np.stack([np.full(len(c), b), c[:, 2], c[:, 1], c[:, 0]], 1).astype(np.int32))
        feats.append(s.points[vox.kept, 3:4])
        p2v.append(vox.inverse + voxel_offset)
        if s.labels is not None:
            labels.append(s.labels[vox.point_index].astype(np.int64))
        new_index = np.full(len(s.points), -1, dtype=np.int64)
        new_index[vox.point_index] = np.arange(len(vox.point_index))
        inside, outside = _split_pairs(s.pairs, new_index, point_offset, image_offset)
        in_crop.append(inside)
        depth_only.append(outside)
        for i in range(s.images.shape[0]):
            sp, sp_offset = _unique_superpixels(s.superpixels[i], sp_offset)
            sps.append(sp)
        image_sample.append(np.full(s.images.shape[0], b, dtype=np.int64))
        image_offset += s.images.shape[0]
        point_offset += len(kept_pts)
        voxel_offset += len(c)
    cat = lambda xs: torch.from_numpy(np.concatenate(xs, 0))  # noqa: E731
    return Batch(
        points=cat(pts).float(),
        point_batch=cat(pbatch),
        voxel_coords=cat(coords),
        voxel_features=cat(feats).float(),
        point_to_voxel=cat(p2v),
        spatial_shape=spatial_shape,
        images=torch.from_numpy(np.concatenate([s.images for s in samples], 0)).float(),
        image_sample=cat(image_sample),
        superpixels=torch.from_numpy(np.stack(sps)),
        intrinsics=torch.from_numpy(np.concatenate([s.intrinsics for s in samples], 0)),
        camera_to_lidar=torch.from_numpy(np.concatenate([s.camera_to_lidar for s in samples], 0)),
        image_aug=torch.from_numpy(np.concatenate([s.image_aug for s in samples], 0)),
        lidar_aug=torch.from_numpy(np.stack([s.lidar_aug for s in samples])),
        pair_point=cat([x[0] for x in in_crop]),
        pair_image=cat([x[1] for x in in_crop]),
        pair_uv=cat([x[2] for x in in_crop]),
        pair_depth=cat([x[3] for x in in_crop]),
        depth_only_image=cat([x[0] for x in depth_only]),
        depth_only_uv=cat([x[1] for x in depth_only]),
        depth_only_depth=cat([x[2] for x in depth_only]),
        batch_size=len(samples),
        num_cameras=max(s.images.shape[0] for s in samples),
        labels=cat(labels) if len(labels) == len(samples) else None,
    )
