"""The `hvdistill` entry point: help lists the verbs, config show prints the resolved config."""

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
