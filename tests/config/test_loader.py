"""Config: defaults are the published recipe; every kind of mistake names the key and the fix."""

from pathlib import Path

import pytest
import yaml

from hvdistill.config import Config, ConfigError, flatten, load_config
from tests.helpers import config_path

DEMO = config_path("demo.yaml")


def problems_of(path=None, overrides=()):
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    return err.value.problems, str(err.value)


def test_defaults_are_the_published_recipe():
    cfg = Config()
    assert cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.9 and cfg.optim.dampening == 0.1
    assert cfg.optim.weight_decay == 1e-4 and cfg.train.epochs == 50 and cfg.train.global_batch == 16
    assert (cfg.loss.temperature, cfg.loss.weight_ipv, cfg.loss.weight_depth, cfg.loss.weight_bev) == (
        0.07,
        1.0,
        60.0,
        0.25,
    )
    assert cfg.geometry.voxel_size == 0.1 and cfg.geometry.bev_size == 256 and cfg.geometry.depth_bins == 118
    assert cfg.data.superpixels.n_segments == 150 and cfg.model.lidar.encoder_blocks == [2, 3, 4, 6]
    # SLidR's loss_superpixels_average, MinkUNet34C's stem, res16unet's BatchNorm momenta (docs/method.md)
    assert cfg.loss.renormalize_pooled is False and cfg.model.lidar.stem_convs == 1
    assert (cfg.model.lidar.bn_momentum, cfg.model.lidar.block_bn_momentum) == (0.05, 0.1)
    assert cfg.loss.key_queue_size == 0  # beyond the paper: off


def test_the_renamed_queue_key_is_refused_with_its_new_name():
    problems, _ = problems_of(None, ["loss.queue_size=64"])
    assert problems == ["loss.queue_size: unknown key; did you mean 'loss.key_queue_size'?"]


def test_every_shipped_config_loads():
    names = sorted(p.name for p in Path(config_path("demo.yaml")).parent.glob("*.yaml"))
    assert {"demo.yaml", "tiny.yaml", "paper.yaml", "cluster-objectstore.yaml"} <= set(names)
    for name in names:  # the study's configs get their teacher from the study (tests/launch/test_study.py)
        if not name.startswith("study"):
            load_config(config_path(name))


def test_override_is_type_checked_and_applied():
    cfg = load_config(DEMO, ["optim.lr=0.1", "train.epochs=3", "augment.scale_range=[0.8, 1.2]"])
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 3 and cfg.augment.scale_range == [0.8, 1.2]
    cfg = load_config(DEMO, ["optim.lr=1"])  # int -> float loses nothing
    assert isinstance(cfg.optim.lr, float)


def test_unknown_keys_get_the_nearest_valid_name():
    problems, _ = problems_of(DEMO, ["optim.lrr=0.1", "trian.epochs=2", "model.lidar.plane=[1]"])
    assert any("optim.lrr" in p and "optim.lr" in p.split("mean")[1] for p in problems)
    assert any("trian" in p and "'train'" in p for p in problems)
    assert any("model.lidar.planes" in p for p in problems)


def test_all_problems_are_reported_at_once_with_fixes():
    problems, message = problems_of(
        DEMO,
        ["train.epochs=abc", "model.image.arch=resnet99", "augment.hflip_p=true", "optim.lr=[1]", "nokey"],
    )
    assert len(problems) == 5
    assert "train.epochs" in message and "expected an integer" in message
    assert "resnet99" in message and "resnet50" in message
    assert "augment.hflip_p" in message and "key.sub=value" in message


def test_semantic_problems_name_the_key_and_the_fix():
    problems, message = problems_of(
        DEMO,
        [
            "model.image.random_init=false",
            "train.micro_batch=2",
            "train.global_batch=3",
            "augment.hflip_p=1.5",
            "geometry.crop_width=417",
            "augment.scale_range=[1.1, 0.9]",
        ],
    )
    assert "model.image.weights" in message and "random_init=true" in message
    assert "train.global_batch" in message and "augment.hflip_p" in message
    assert "geometry.crop_width" in message and "augment.scale_range" in message
    assert "dist.num_workers" in message  # demo.yaml's 2 workers cannot split a global batch of 3
    assert len(problems) == 6


def test_yaml_mistakes(tmp_path):
    bad_type = tmp_path / "a.yaml"
    bad_type.write_text(yaml.safe_dump({"optim": {"lr": "fast"}, "modell": {}}))
    problems, _ = problems_of(str(bad_type))
    assert any("optim.lr" in p for p in problems) and any("'model'" in p for p in problems)
    broken = tmp_path / "b.yaml"
    broken.write_text("optim: [unclosed")
    assert "not valid YAML" in problems_of(str(broken))[1]
    assert "not found" in problems_of(str(tmp_path / "missing.yaml"))[1]
    sources = tmp_path / "c.yaml"
    sources.write_text(
        yaml.safe_dump(
            {
                "data": {"sources": [{"name": "waymo", "rooot": "x"}]},
                "model": {"image": {"random_init": True}},
            }
        )
    )
    problems, _ = problems_of(str(sources))
    assert any("data.sources[0].name" in p or "waymo" in p for p in problems)
    assert any("rooot" in p and "root" in p for p in problems)


def test_flatten_for_tracking_and_sweeps():
    flat = flatten(load_config(DEMO))
    assert flat["optim.lr"] == 0.5 and flat["data.sources.0.name"] == "nuscenes"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_list_items_are_addressed_by_index_like_flatten():
    cfg = load_config(DEMO, ["data.sources.0.root=/data/x", "data.sources.0.weight=2"])
    assert cfg.data.sources[0].root == "/data/x" and cfg.data.sources[0].weight == 2.0
    problems, _ = problems_of(DEMO, ["data.sources.3.root=/x", "data.sources.0.rot=/x"])
    assert any(
        "0..1" in p for p in problems
    )  # demo.yaml lists train and val and any("data.sources.0.root" in p for p in problems)


def test_scientific_notation_floats_in_overrides_and_yaml(tmp_path):
    cfg = load_config(DEMO, ["optim.lr=1e-3", "optim.weight_decay=5E-5"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 5e-5
    f = tmp_path / "sci.yaml"
    f.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(str(f), ["model.image.random_init=true"]).optim.lr == 1e-4
    problems, _ = problems_of(DEMO, ["optim.lr=nan", "optim.lr=1e-3x"])
    assert len(problems) == 2


def test_grid_and_augmentation_consistency_checks():
    problems, message = problems_of(
        DEMO,
        [
            "geometry.depth_step=0.7",
            "augment.crop_max_tries=0",
            "model.image.output_stride=4",  # the demo's geometry.feature_stride is 8
            "augment.crop_area=[0.0, 1.0]",
            "data.stored_image_width=0",
        ],
    )
    for key in (
        "geometry.depth_step",
        "augment.crop_max_tries",
        "model.image.output_stride",
        "augment.crop_area",
        "data.stored_image_width",
    ):
        assert key in message


def test_a_number_where_a_string_belongs_is_refused_not_rewritten():
    # unquoted YAML turns sequence "00" into 0: silently writing sequences/0 would lose the name
    with pytest.raises(
        ConfigError, match=r"synth\.kitti_sequences\[0\]: expected a string, got the number 0"
    ):
        load_config(None, ["synth.kitti_sequences=[00,08]"], sections=("synth",))
    assert load_config(
        None, ['synth.kitti_sequences=["00","08"]'], sections=("synth",)
    ).synth.kitti_sequences == [
        "00",
        "08",
    ]
