"""Values that become paths follow one name rule; every float is finite; label fractions are 1 / k
everywhere they are given (fine-tuning, sweeps, studies), all checked when the config loads."""

from __future__ import annotations

import pytest

from hvdistill.config import ConfigError, load_config
from hvdistill.config.data import image_pixel_limit
from hvdistill.config.downstream import label_fraction_k
from hvdistill.eval.splits import keep_every
from tests.helpers import config_path

TINY = config_path("tiny.yaml")


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, list(overrides))
    return err.value.problems


@pytest.mark.parametrize(
    "override",
    ["optim.lr=.nan", "loss.temperature=.inf", "finetune.lr_trunk=-.inf", "optim.lr=1e999", "optim.lr=nan"],
)
def test_non_finite_floats_are_refused_with_the_key(override):
    key = override.split("=")[0]
    found = problems_of(override)
    assert len(found) == 1 and found[0].startswith(f"{key}: ") and "not a finite number" in found[0]


def test_non_finite_floats_in_lists_and_yaml_files_are_refused(tmp_path):
    found = problems_of("geometry.point_range=[0, 0, 0, .inf, 1, 1]", "sweep.lr_trunk=[0.1, .nan]")
    assert [p.split(":")[0] for p in found] == ["geometry.point_range[3]", "sweep.lr_trunk[1]"]
    config = tmp_path / "nan.yaml"
    config.write_text("optim:\n  lr: .nan\nloss:\n  temperature: .inf\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(config))
    assert {p.split(":")[0] for p in err.value.problems} == {"optim.lr", "loss.temperature"}
    assert load_config(TINY, ["optim.lr=1e-3"]).optim.lr == 0.001  # YAML 1.1's string float still reads


@pytest.mark.parametrize("key", ["train.run_name", "finetune.run_name", "sweep.name", "study.tag"])
@pytest.mark.parametrize("name", ["../x", "/abs/run", "a/b", "..", ".hidden", "-x", "a b", "x" * 101])
def test_names_that_become_paths_cannot_leave_their_directory(key, name):
    found = problems_of(f"{key}={name}")
    assert len(found) == 1 and found[0].startswith(f"{key}: ") and "plain name" in found[0]


def test_plain_names_pass():
    cfg = load_config(
        TINY, ["train.run_name=r-1.a_b", "finetune.run_name=ft.0", "sweep.name=S1", "study.tag=long-ft"]
    )
    assert (cfg.train.run_name, cfg.sweep.name, cfg.study.tag) == ("r-1.a_b", "S1", "long-ft")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sweep.label_fractions=[0]", "sweep.label_fractions"),
        ("sweep.label_fractions=[0.3]", "sweep.label_fractions"),
        ("sweep.label_fractions=[0.5,0.5]", "sweep.label_fractions"),
        ("study.probe_fractions=[0.3]", "study.probe_fractions"),
        ("study.probe_fractions=[1.5]", "study.probe_fractions"),
        ("finetune.label_fraction=0.3", "finetune.label_fraction"),
    ],
)
def test_fractions_are_checked_up_front_by_the_splits_rule(override, key):
    found = problems_of(override)
    assert len(found) == 1 and found[0].startswith(f"{key}: ")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.5, -0.1, 0.01, 0.05, 0.25, 1.0])
def test_the_config_check_and_the_split_share_one_rule(fraction):
    k, reason = label_fraction_k(fraction)
    if k:
        assert keep_every(fraction) == k and not reason
    else:
        with pytest.raises(ValueError, match="label fraction"):
            keep_every(fraction)


def test_duplicate_sweep_coordinates_are_refused():
    found = problems_of("sweep.seeds=[0,0]", "sweep.checkpoints=[random,random]")
    assert {p.split(":")[0] for p in found} == {"sweep.seeds", "sweep.checkpoints"}


def test_the_raw_image_limit_follows_the_stored_size_or_the_key():
    cfg = load_config(TINY)
    assert image_pixel_limit(cfg.data) == 16 * 800 * 450  # 3200 x 1800: nuScenes' 1600 x 900 fits
    assert image_pixel_limit(load_config(TINY, ["data.max_image_pixels=1000"]).data) == 1000
    assert problems_of("data.max_image_pixels=-1")[0].startswith("data.max_image_pixels")
