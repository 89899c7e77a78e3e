"""Voxelisation (crop, inverse index, one kept point per voxel) and BEV cell indexing."""

import numpy as np
import torch

from hvdistill.geometry.bev import BEVGrid
from hvdistill.geometry.voxel import grid_shape, voxelize

RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]


def test_grid_shape_of_paper_crop():
    assert grid_shape(RANGE, 0.1) == (1024, 1024, 80)


def test_voxelize_inverse_and_kept_points():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-60, 60, size=(3000, 2)), rng.uniform(-6, 4, size=(3000, 1))], 1)
    pts = np.concatenate([pts, pts[:500] + 0.001], 0)  # duplicates share voxels
    v = voxelize(pts, 0.1, RANGE)
    inside = pts[v.point_index]
    assert np.all(inside >= np.array(RANGE[:3])) and np.all(inside < np.array(RANGE[3:]))
    outside = pts[~v.in_range]
    assert np.all(np.any((outside < np.array(RANGE[:3])) | (outside >= np.array(RANGE[3:])), axis=1))
    # each in-range point's voxel contains it
    expected = np.floor((inside - np.array(RANGE[:3])) / 0.1).astype(np.int64)
    np.testing.assert_array_equal(v.coords[v.inverse], expected)
    # voxels are unique, the kept point is the first point of its voxel and lies in it
    assert len(np.unique(v.coords, axis=0)) == len(v.coords)
    np.testing.assert_array_equal(v.coords, np.floor((pts[v.kept] - np.array(RANGE[:3])) / 0.1))
    for vox in range(0, len(v.coords), 97):
        members = v.point_index[v.inverse == vox]
        assert v.kept[vox] == members.min()


def test_voxelize_drops_non_finite_points():
    pts = np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [np.inf, 1.0, 1.0]])
    v = voxelize(pts, 0.1, RANGE)
    assert v.point_index.tolist() == [0]


def test_bev_cells_known_answers_and_voxel_route():
    grid = BEVGrid(-51.2, -51.2, 0.4, 256)
    xy = np.array([[-51.2, -51.2], [51.19, 51.19], [0.0, 0.0], [0.39, -0.01], [51.2, 0.0], [-51.3, 0.0]])
    assert grid.flat_index(xy).tolist() == [0, 255 * 256 + 255, 128 * 256 + 128, 127 * 256 + 128, -1, -1]
    torch_out = grid.flat_index(torch.from_numpy(xy))
    assert torch_out.tolist() == grid.flat_index(xy).tolist()
    rng = np.random.default_rng(2)
    pts = rng.uniform(-51.2, 51.2, size=(5000, 3))
    pts[:, 2] = 0.0
    v = voxelize(pts, 0.1, RANGE)
    via_voxels = grid.voxel_to_flat(v.coords[v.inverse, 0], v.coords[v.inverse, 1], stride=4)
    np.testing.assert_array_equal(via_voxels, grid.flat_index(pts[v.point_index]))
