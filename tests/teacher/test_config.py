"""The `teacher_train` section's checks: every mistake listed with its fix, in one ConfigError."""

from __future__ import annotations

import pytest

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, load_config, problems
from hvdistill.config.data import SourceConfig
from hvdistill.teacher.data import distinct_roots


def test_defaults_are_clean_and_pretraining_does_not_carry_the_section():
    assert problems(Config(), ["teacher_train"]) == []
    assert "teacher_train" not in RUN_SECTIONS["pretrain"]
    assert "teacher_train" in RUN_SECTIONS["teacher"]


def test_every_mistake_is_listed_with_its_key():
    overrides = [
        "teacher_train.steps=0",
        "teacher_train.batch_size=0",
        "teacher_train.lr=0",
        "teacher_train.momentum=1.5",
        "teacher_train.weight_decay=-1",
        "teacher_train.loader_workers=-1",
        "teacher_train.eval_images=-2",
        "teacher_train.max_bad_fraction=2",
        "teacher_train.output_stride=3",
        "teacher_train.output=runs/teacher.bin",
        "teacher_train.eval_split=train",
        "model.image.output_stride=6",
    ]
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, sections=RUN_SECTIONS["teacher"])
    text = str(err.value)
    for key in [o.split("=")[0] for o in overrides]:
        assert key in text, key


def test_mixed_datasets_are_refused():
    cfg = Config()
    cfg.data.sources = [SourceConfig(name="nuscenes", root="a"), SourceConfig(name="semantickitti", root="b")]
    assert any("mixes datasets" in p for p in problems(cfg, ["teacher_train"]))


def test_geometry_mistakes_are_listed_with_their_fix():
    overrides = [
        "teacher_train.target=geometry",
        "teacher_train.depth_bins=1",
        "teacher_train.depth_min=0",
        "teacher_train.normal_weight=-1",
    ]
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, sections=RUN_SECTIONS["teacher"])
    text = str(err.value)
    assert "teacher_train.depth_bins: 1 must be >= 2" in text
    assert "teacher_train.depth_min: 0" in text and "teacher_train.normal_weight: -1" in text
    with pytest.raises(ConfigError, match=r"depth_max: 80.0 is beyond the depth maps' 65.535 m"):
        load_config(None, ["teacher_train.depth_max=80"], sections=RUN_SECTIONS["teacher"])
    with pytest.raises(ConfigError, match=r"depth_max: 1.0 must be > teacher_train.depth_min=2.0"):
        load_config(
            None, ["teacher_train.depth_min=2", "teacher_train.depth_max=1"], sections=["teacher_train"]
        )
    with pytest.raises(ConfigError, match="teacher_train.target"):
        load_config(None, ["teacher_train.target=depth"], sections=["teacher_train"])


def test_the_geometry_target_is_a_valid_override():
    cfg = load_config(None, ["teacher_train.target=geometry"], sections=RUN_SECTIONS["teacher"])
    assert cfg.teacher_train.target == "geometry"


def test_a_config_mixing_datasets_names_the_one_the_teacher_reads():
    cfg = Config()
    cfg.data.sources = [SourceConfig(name="nuscenes", root="a"), SourceConfig(name="argoverse2", root="b")]
    found = problems(cfg, ["teacher_train"])
    assert any("set teacher_train.dataset to one of them" in p for p in found), found
    cfg.teacher_train.dataset = "semantickitti"
    found = problems(cfg, ["teacher_train"])
    assert any("'semantickitti' is not a dataset of data.sources" in p for p in found), found
    cfg.teacher_train.dataset = "argoverse2"  # no class maps in a labelled class space
    found = problems(cfg, ["teacher_train"])
    assert any("Argoverse 2 has none: use teacher_train.target=geometry" in p for p in found), found
    cfg.teacher_train.target = "geometry"
    assert problems(cfg, ["teacher_train"]) == []
    cfg.teacher_train.dataset = "nuscenes"
    assert [s.name for s in distinct_roots(cfg)] == ["nuscenes"]  # the teacher reads its dataset only
