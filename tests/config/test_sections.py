"""Each section's rules live with it: validate composes them, per section or per kind of run."""

from __future__ import annotations

import dataclasses

import pytest

from hvdistill.config import (
    CHECKS,
    RUN_SECTIONS,
    SECTIONS,
    Config,
    ConfigError,
    DataConfig,
    GeometryConfig,
    SourceConfig,
    flatten,
    load_config,
    problems,
    validate,
)
from hvdistill.config.geometry import bev_stride, voxel_grid_shape
from hvdistill.geometry.voxel import grid_shape
from tests.helpers import config_path

DEMO = config_path("demo.yaml")


def test_every_section_has_its_checks_and_every_run_names_real_sections():
    assert set(CHECKS) == set(SECTIONS) == {f.name for f in dataclasses.fields(Config)}
    for run, sections in RUN_SECTIONS.items():
        assert set(sections) <= set(SECTIONS), run


def test_pretraining_carries_no_synth_finetune_or_sweep_parameters():
    cfg = load_config(DEMO)
    flat = flatten(cfg, RUN_SECTIONS["pretrain"])
    assert not [k for k in flat if k.split(".")[0] in ("synth", "finetune", "sweep")]
    assert flat["optim.lr"] == cfg.optim.lr and flat["data.sources.1.split"] == "val"
    assert flat["model.lidar.planes"] == cfg.model.lidar.planes
    everything = flatten(cfg)
    assert {k: v for k, v in everything.items() if k in flat} == flat
    assert "synth.scenes" in everything and "synth.scenes" in flatten(cfg, RUN_SECTIONS["synth"])
    assert set(flatten(cfg, ["synth"])) == {k for k in everything if k.startswith("synth.")}


def test_validate_checks_only_the_sections_asked_for():
    cfg = Config()  # no teacher checkpoint: the model section is not usable
    cfg.synth.scenes = 0
    cfg.data.max_bad_fraction = 2.0
    assert validate(cfg, []) is cfg
    with pytest.raises(ConfigError) as err:
        validate(cfg, RUN_SECTIONS["synth"])
    assert err.value.problems == ["synth.scenes: 0 must be >= 1"]
    found = problems(cfg, RUN_SECTIONS["shard"])
    assert len(found) == 1 and found[0].startswith("data.max_bad_fraction")
    everything = problems(cfg)
    assert any(p.startswith("model.image.weights") for p in everything) and len(everything) == 3
    with pytest.raises(ValueError, match="unknown config section"):
        validate(cfg, ["synthh"])


def test_a_bad_model_config_fails_when_the_config_loads():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["model.lidar.bev_head_stride=2", "model.lidar.planes=[8, 8]"])
    message = str(err.value)
    assert "model.lidar.bev_head_stride=4" in message and "planes needs 8 entries" in message
    # the voxel grid 1024 x 1024 at stride 3 (0.3 m cells): not a power of two, and does not divide
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["geometry.bev_resolution=0.3", "model.lidar.bev_head_stride=3"])
    assert "power-of-two" in str(err.value) and "drops the last voxel rows" in str(err.value)
    with pytest.raises(ConfigError, match=r"geometry.bev_size=256"):
        load_config(DEMO, ["geometry.bev_size=128"])
    with pytest.raises(ConfigError, match=r"whole multiple of geometry.voxel_size"):
        load_config(DEMO, ["geometry.bev_resolution=0.45"])


def test_cross_section_rules_sit_with_the_section_of_the_dependent_key():
    cfg = load_config(DEMO)
    cfg.model.image.output_stride = 4  # a model key checked against geometry.feature_stride (8)
    cfg.loss.depth_target_pool = 4  # a loss key checked against geometry.feature_stride
    assert problems(cfg, ["geometry"]) == []
    assert [p.split(":")[0] for p in problems(cfg, ["model"])] == ["model.image.output_stride"]
    assert [p.split(":")[0] for p in problems(cfg, ["loss"])] == ["loss.depth_target_pool"]


def test_config_side_grid_quantities_match_the_geometry_package():
    for g in (
        GeometryConfig(),
        GeometryConfig(point_range=[-40.0, -30.0, -3.0, 40.0, 30.0, 1.0], voxel_size=0.2),
    ):
        assert voxel_grid_shape(g) == grid_shape(g.point_range, g.voxel_size)
    assert bev_stride(GeometryConfig()) == 4


def test_sections_are_slotted_and_keyword_only():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.optim.lrr = 0.1  # a typo'd attribute set in code is refused
    with pytest.raises(AttributeError):
        cfg.data.shard_size = 1.0
    with pytest.raises(TypeError):
        SourceConfig("nuscenes")  # positional construction is refused
    for f in dataclasses.fields(Config):
        section = type(getattr(cfg, f.name))
        assert "__slots__" in vars(section) and not hasattr(getattr(cfg, f.name), "__dict__"), f.name
    assert dataclasses.replace(DataConfig(), shard_size_mb=8.0).shard_size_mb == 8.0
