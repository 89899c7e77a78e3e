"""`from_dict` is `to_dict`'s validated inverse: how a config travels to Ray workers."""

import json

import pytest

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, from_dict, load_config, to_dict


def test_round_trip_through_json_keeps_every_value():
    cfg = load_config("configs/tiny.yaml", ["optim.lr=0.1", "data.sources.0.root=/data/nus"])
    back = from_dict(json.loads(json.dumps(to_dict(cfg))), RUN_SECTIONS["pretrain"])
    assert back == cfg and isinstance(back, Config)


def test_unknown_keys_and_bad_values_are_listed_together():
    d = to_dict(Config())
    d["optim"]["lrr"] = 0.1
    d["train"]["max_nonfinite_steps"] = "many"
    d["dist"]["zero_stage"] = 7
    with pytest.raises(ConfigError) as err:
        from_dict(d)
    text = str(err.value)
    assert "did you mean 'optim.lr'" in text and "train.max_nonfinite_steps" in text
    d["optim"].pop("lrr")
    d["train"]["max_nonfinite_steps"] = 0
    with pytest.raises(ConfigError, match="dist.zero_stage"):  # semantic checks run too
        from_dict(d)


def test_not_a_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match="mapping"):
        from_dict([1, 2])  # type: ignore[arg-type]
