"""The `hvdistill` entry point: help lists the verbs, config show prints the resolved config."""

import json
import subprocess
import sys

import yaml

from hvdistill import cli
from hvdistill.config.cli import main as config_main


def test_help_lists_verbs(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in out


def test_every_registered_verb_module_exists():
    import importlib.util

    for verb, (module, _) in cli.VERBS.items():
        assert importlib.util.find_spec(module) is not None, f"verb {verb}: module {module} is missing"


def test_unknown_verb_suggests(capsys):
    assert cli.main(["confg"]) == 2
    assert "config" in capsys.readouterr().err


def test_config_show_resolves_overrides(capsys):
    assert config_main(["show", "configs/demo.yaml", "optim.lr=0.1"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.1 and shown["model"]["image"]["arch"] == "resnet18"


def test_config_show_typo_prints_nearest_key(capsys):
    assert config_main(["show", "configs/demo.yaml", "optim.lrr=0.1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "hvdistill.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "config" in out.stdout


def test_shard_takes_every_source_from_the_config(tmp_path):
    from sharding.cli import build_parser, resolve_config

    config = tmp_path / "two.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "sources": [
                        {"name": "nuscenes", "root": "data/nus", "split": "train"},
                        {"name": "semantickitti", "root": "data/kitti", "split": "val"},
                    ]
                }
            }
        )
    )
    argv = ["--out", str(tmp_path / "s"), "--config", str(config), "data.shard_size_mb=64"]
    # only the data section is validated: an unusable model section does not block sharding
    sources, cfg = resolve_config(build_parser().parse_args([*argv, "model.lidar.bev_head_stride=3"]))
    assert [(s.name, s.split) for s in sources] == [("nuscenes", "train"), ("semantickitti", "val")]
    assert all(s.root.startswith("/") and s.root.endswith(("data/nus", "data/kitti")) for s in sources)
    assert cfg.data.shard_size_mb == 64.0


def test_shard_refuses_bad_data_config_before_starting_ray(tmp_path, capsys):
    from sharding.cli import main as shard_main

    out = tmp_path / "shards"
    argv = ["--out", str(out), "--workers", "0", "data.max_bad_fraction=2", "data.shard_size_mb=0"]
    assert shard_main(argv) == 2
    err = capsys.readouterr().err
    assert "data.max_bad_fraction" in err and "data.shard_size_mb" in err and "--workers" in err
    assert shard_main(["--out", str(out), "data.sources=[]", "data.shards=[x]"]) == 2
    assert "data.sources: empty" in capsys.readouterr().err
    twice = "data.sources=[{name: nuscenes, split: train}, {name: nuscenes, split: train}]"
    assert shard_main(["--out", str(out), twice]) == 2
    assert "twice" in capsys.readouterr().err
    assert not out.exists()


def test_the_boundary_turns_user_failures_into_one_line_and_lets_bugs_surface(monkeypatch, capsys):
    import pytest

    monkeypatch.setitem(cli.VERBS, "boom", ("tests.helpers.failing_verb", "raises on purpose"))
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(["boom", "missing-file"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "hvdistill boom: /nonexistent-hvdistill-test/config.yaml: No such file or directory; "
        "check the path given on the command line or in the config\n"
    )
    assert cli.main(["boom", "interrupt"]) == 130 and "interrupted" in capsys.readouterr().err
    with pytest.raises(json.JSONDecodeError):  # a ValueError raised inside a library is a bug
        cli.main(["boom", "library-value-error"])
    with pytest.raises(KeyError):
        cli.main(["boom", "key-error"])
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(FileNotFoundError):  # the traceback on request
        cli.main(["boom", "missing-file"])


def test_errors_the_project_raises_for_users_are_known_by_class_or_by_where_they_were_raised():
    import pytest

    from hvdistill.config import ConfigError
    from hvdistill.dirlock import OutputLocked
    from hvdistill.eval.splits import keep_every

    assert cli.is_user_error(ConfigError(["x: bad"])) and cli.is_user_error(OutputLocked("held"))
    with pytest.raises(ValueError) as raised:
        keep_every(0.3)  # a plain ValueError, raised by a line of hvdistill/
    assert cli.is_user_error(raised.value)
    assert not cli.is_user_error(ValueError("made here, never raised"))
    assert not cli.is_user_error(TypeError("a bug")) and not cli.is_user_error(KeyError("k"))
