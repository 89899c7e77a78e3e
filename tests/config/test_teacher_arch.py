"""A ViT teacher's config: its 14 px stride must be the lift's and the depth targets' grid; any crop."""

from __future__ import annotations

import pytest

from hvdistill.config import ConfigError, load_config, problems
from tests.helpers import config_path

TINY = config_path("tiny.yaml")
VIT = ["model.image.arch=vit_small_patch14_reg4"]
VIT_GRID = ["geometry.feature_stride=14", "loss.depth_target_pool=14"]


def test_a_vit_needs_its_patch_as_the_feature_stride_and_the_depth_pool():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, VIT)
    keys = [p.split(":")[0] for p in err.value.problems]
    assert keys == ["geometry.feature_stride", "loss.depth_target_pool"]
    message = str(err.value)
    assert "teacher's stride, 14 (model.image.arch=vit_small_patch14_reg4: its patch size)" in message
    assert "set geometry.feature_stride=14 loss.depth_target_pool=14" in message
    assert "set loss.depth_target_pool=14" in message
    with pytest.raises(ConfigError, match=r"loss.depth_target_pool: 4 must equal geometry.feature_stride=14"):
        load_config(TINY, [*VIT, "geometry.feature_stride=14"])


def test_a_vit_takes_the_paper_crop_a_resnet_must_tile():
    cfg = load_config(TINY, [*VIT, *VIT_GRID])  # 224 x 416: 416 is not a multiple of 14
    assert (cfg.geometry.crop_height, cfg.geometry.crop_width) == (224, 416)
    cfg.model.image.arch = "resnet18"
    cfg.geometry.feature_stride = cfg.model.image.output_stride = cfg.loss.depth_target_pool = 8
    cfg.geometry.crop_width = 420
    assert problems(cfg, ["model"]) == [
        "geometry.crop_width: 420 is not a multiple of geometry.feature_stride=8 "
        "(a ResNet teacher's feature map tiles the crop exactly)"
    ]


def test_weights_formats_follow_the_kind_of_teacher():
    with pytest.raises(
        ConfigError,
        match=r"weights_format: moco is a format of ResNet checkpoints.*one of \['dinov2', 'timm'\]",
    ):
        load_config(TINY, [*VIT, *VIT_GRID, "model.image.weights_format=moco"])
    with pytest.raises(ConfigError, match=r"weights_format: timm is a format of ViT checkpoints"):
        load_config(TINY, ["model.image.weights_format=timm"])
    with pytest.raises(ConfigError, match=r"geometry.crop_height: 10 is smaller than one 14 px patch"):
        load_config(TINY, [*VIT, *VIT_GRID, "geometry.crop_height=10"])
