"""Where the teacher's cells sit, from the config alone: ResNet (s, 0), ViT/14 (14, 6.5); cells per crop."""

import pytest
import torch

from hvdistill.config.model import IMAGE_ARCHS
from hvdistill.geometry.frustum import FeatureGrid, make_frustum, teacher_feature_grid
from hvdistill.models.image.resnet import ARCHITECTURES
from hvdistill.models.image.teacher import build_backbone, feature_grid
from hvdistill.models.image.vit import VIT_ARCHITECTURES


def test_each_teacher_arch_has_the_grid_its_network_derives():
    assert set(IMAGE_ARCHS) == set(ARCHITECTURES) | set(VIT_ARCHITECTURES)  # config names = model tables
    for arch in IMAGE_ARCHS:
        with torch.device("meta"):
            backbone = build_backbone(arch, 8)
        assert feature_grid(backbone) == teacher_feature_grid(arch, 8), arch
    assert teacher_feature_grid("resnet50", 4) == (4, 0.0)
    assert teacher_feature_grid("vit_base_patch14_reg4", 4) == (14, 6.5)  # output_stride is a ResNet key


@pytest.mark.parametrize(
    "length,cells",
    [(224, 16), (416, 30), (420, 30), (414, 30), (413, 29), (14, 1), (7, 0)],
)
def test_vit_cells_are_those_centred_on_a_crop_pixel(length, cells):
    """416 = 29 x 14 + 10: the 30th cell's centre 412.5 is inside; 413 = 29 x 14 + 7: 412.5 is its edge."""
    grid = FeatureGrid(14, 6.5)
    assert grid.cells(length) == cells
    centres = grid.centres(length)
    assert len(centres) == cells and (centres <= length - 1).all()
    assert grid.stride * cells + grid.centre > length - 1  # the next cell would not be


def test_resnet_cells_tile_the_crop():
    for stride in (4, 8, 16):
        assert FeatureGrid(stride, 0.0).cells(224) == 224 // stride
        assert FeatureGrid(stride, 0.0).cells(416) == 416 // stride


def test_frustum_rays_start_at_the_cell_centres_of_the_vit_grid():
    grid = teacher_feature_grid("vit_small_patch14", 4)
    frustum = make_frustum(224, 416, grid.stride, 1.0, 60.0, 0.5, grid.centre)
    assert frustum.shape == (118, 16, 30, 3)
    assert torch.equal(frustum[0, 0, :, 0], 14.0 * torch.arange(30, dtype=torch.float64) + 6.5)
    assert torch.equal(frustum[0, :, 0, 1], 14.0 * torch.arange(16, dtype=torch.float64) + 6.5)
