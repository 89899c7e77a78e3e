"""Collate: voxel layout in spconv order, offset batching, pairs and superpixels re-indexed."""

import numpy as np
import torch

from hvdistill.config import AugmentConfig, GeometryConfig
from hvdistill.data.augment import augment_sample
from hvdistill.data.collate import collate
from tests.helpers.memory_sample import make_sample

GEO = GeometryConfig()


def make_batch():
    augs = [augment_sample(make_sample(s), AugmentConfig(), GEO, np.random.default_rng(s)) for s in (0, 1)]
    return augs, collate(augs, GEO)


def test_shapes_and_offsets():
    augs, b = make_batch()
    assert b.batch_size == 2 and b.num_cameras == 2 and b.spatial_shape == [80, 1024, 1024]
    assert b.images.shape == (4, 3, 224, 416) and b.superpixels.shape == (4, 224, 416)
    assert b.voxel_coords.dtype == torch.int32 and b.voxel_coords.shape[1] == 4
    assert b.point_batch.tolist() == sorted(b.point_batch.tolist())
    assert len(b.points) == len(b.point_to_voxel) == len(b.point_batch)


def test_every_point_lies_in_its_voxel():
    _, b = make_batch()
    lo = torch.tensor(GEO.point_range[:3], dtype=torch.float64)
    ijk = torch.floor((b.points[:, :3].double() - lo) / GEO.voxel_size).long()  # (P, 3) x, y, z
    vox = b.voxel_coords[b.point_to_voxel].long()  # (P, 4) b, z, y, x
    assert torch.equal(vox[:, 0], b.point_batch)
    assert torch.equal(vox[:, 1:], ijk[:, [2, 1, 0]])


def test_pairs_point_to_the_same_points_and_images():
    augs, b = make_batch()
    n0 = int((b.point_batch == 0).sum())
    for s, aug in enumerate(augs):
        mine = b.image_sample[b.pair_image] == s
        pts = b.points[b.pair_point[mine]]
        assert torch.all(b.point_batch[b.pair_point[mine]] == s)
        # each paired point exists (same coordinates) in the sample's augmented cloud
        cloud = torch.from_numpy(aug.points)
        assert torch.isin(pts[:, 0], cloud[:, 0]).all()
    assert b.pair_point.max() < len(b.points) and n0 > 0


def test_superpixel_ids_are_unique_across_images():
    _, b = make_batch()
    ids = [set(b.superpixels[i][b.superpixels[i] >= 0].unique().tolist()) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not ids[i] & ids[j]


def test_labels_follow_points():
    _, b = make_batch()
    assert b.labels is not None and b.labels.shape == (len(b.points),)


def test_samples_with_different_camera_counts_keep_pairs_on_their_images():
    """A 2-camera sample, a 1-camera sample (as SemanticKITTI mixed with nuScenes), a 2-camera one."""
    from dataclasses import replace

    geo_aug = AugmentConfig()
    one_cam = make_sample(1)
    one_cam = replace(one_cam, cameras=one_cam.cameras[:1], pairs=one_cam.pairs[one_cam.pairs[:, 1] == 0])
    augs = [
        augment_sample(s, geo_aug, GEO, np.random.default_rng(i))
        for i, s in enumerate((make_sample(0), one_cam, make_sample(2)))
    ]
    b = collate(augs, GEO)
    assert b.images.shape[0] == 5 and b.image_sample.tolist() == [0, 0, 1, 2, 2]
    assert torch.equal(b.image_sample[b.pair_image], b.point_batch[b.pair_point])
    for s, aug in enumerate(augs):  # each sample's pairs sit on its own images, in its camera order
        first_image = int((b.image_sample == s).nonzero()[0])
        mine = b.image_sample[b.pair_image] == s
        cams = (b.pair_image[mine] - first_image).numpy()
        assert len(cams) > 0 and set(cams.tolist()) <= set(aug.pairs[:, 1].astype(np.int64).tolist())


def test_pairs_outside_the_voxel_crop_become_depth_only_pairs():
    augs, _ = make_batch()
    small = GeometryConfig(point_range=[-20.0, -20.0, -5.0, 20.0, 20.0, 3.0])  # points reach 40 m
    b = collate(augs, small)
    total_pairs = sum(len(a.pairs) for a in augs)
    assert len(b.pair_point) + len(b.depth_only_depth) == total_pairs
    assert len(b.depth_only_depth) > 1000 and len(b.pair_point) > 1000
    assert float(b.depth_only_depth.max()) > float(b.pair_depth.max())
    assert torch.all(b.depth_only_image < b.images.shape[0])
    outside = {(round(float(d), 3)) for d in b.depth_only_depth}
    inside = {(round(float(d), 3)) for d in b.pair_depth}
    assert outside - inside  # depth-only targets are new information, not copies
