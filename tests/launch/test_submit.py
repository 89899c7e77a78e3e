"""`hvdistill submit`, the parts that need no cluster: token lookup, the job request, refusals.

The job actually running on a `ray start` cluster is tests/launch/test_submit_cluster.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hvdistill import cli
from launch.submit import auth_headers, auth_token, build_parser, job_request, main

REPO = Path(__file__).resolve().parents[2]
ABS = [
    "train.output_dir=/mnt/shared/runs",
    "data.shards=[/mnt/shared/shards]",
    "model.image.random_init=true",
]


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: an empty HOME and none of Ray's token variables."""
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_token_from_env_then_path_then_home(no_token, monkeypatch):
    assert auth_token() is None and auth_headers() == {}
    (no_token / ".ray").mkdir()
    (no_token / ".ray" / "auth_token").write_text("home-token\n")
    assert auth_token() == "home-token"
    path = no_token / "cluster.token"
    path.write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert auth_token() == "path-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth_headers() == {"Authorization": "Bearer env-token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}


def request_for(*extra: str, cwd: Path = REPO) -> tuple[dict, str]:
    args = build_parser().parse_args(["pretrain", "configs/tiny.yaml", *ABS, *extra])
    args.working_dir = str(cwd)
    request, run_name, _ = job_request(args)
    return request, run_name


def test_request_runs_pretrain_on_ray_with_a_fixed_run_name(monkeypatch):
    monkeypatch.chdir(REPO)
    request, run_name = request_for("optim.lr=0.1")
    words = shlex.split(request["entrypoint"])
    assert words[:5] == ["python", "-m", "hvdistill.cli", "pretrain", "configs/tiny.yaml"]
    assert "optim.lr=0.1" in words and f"train.run_name={run_name}" in words
    assert words[-3:] == ["--ray", "--address", "auto"] and run_name.startswith("pretrain-")
    assert request["runtime_env"]["working_dir"] == str(REPO)
    assert "/data/" in request["runtime_env"]["excludes"]  # anchored: hvdistill/data/ is uploaded
    named, _ = request_for("train.run_name=mine")
    assert shlex.split(named["entrypoint"]).count("train.run_name=mine") == 1


def test_env_sets_job_variables_from_values_or_this_shell(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HV_TEST_VALUE", "from-shell")
    request, _ = request_for("--env", "TORCH_EXTENSIONS_DIR=/mnt/shared/ext", "--env", "HV_TEST_VALUE")
    assert request["runtime_env"]["env_vars"] == {
        "TORCH_EXTENSIONS_DIR": "/mnt/shared/ext",
        "HV_TEST_VALUE": "from-shell",
    }
    monkeypatch.delenv("HV_TEST_VALUE")
    assert main(["pretrain", "configs/tiny.yaml", *ABS, "--env", "HV_TEST_VALUE"]) == 2
    assert "not set in this shell" in capsys.readouterr().err


def test_no_upload_runs_the_installed_package_with_the_path_as_given(monkeypatch):
    monkeypatch.chdir(REPO)
    request, _ = request_for("--no-upload")
    assert request["runtime_env"] == {} and "configs/tiny.yaml" in request["entrypoint"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.output_dir=runs", "train.output_dir"),
        ("data.shards=[shards]", "data.shards.0"),
        ("dist.storage_path=ray-state", "dist.storage_path"),
    ],
)
def test_relative_paths_are_refused_before_submitting(monkeypatch, capsys, override, key):
    monkeypatch.chdir(REPO)
    argv = ["pretrain", "configs/tiny.yaml", *ABS, override, "--address", "http://127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and "absolute" in err


def test_config_typos_fail_before_any_connection(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert (
        main(["pretrain", "configs/tiny.yaml", *ABS, "optim.lrr=1", "--address", "http://127.0.0.1:1"]) == 2
    )
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_config_outside_the_working_dir_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    outside = tmp_path / "c.yaml"
    outside.write_text("train:\n  global_batch: 2\n  micro_batch: 1\n")
    argv = ["pretrain", str(outside), *ABS, "--address", "http://127.0.0.1:1"]
    assert main(argv) == 2
    assert "outside the uploaded working directory" in capsys.readouterr().err


def test_no_address_says_how_to_give_one(monkeypatch, capsys):
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert main(["status", "raysubmit_x"]) == 2
    assert "--address http://HOST:8265" in capsys.readouterr().err


def test_unreachable_cluster_is_a_clear_error(capsys):
    assert main(["status", "raysubmit_x", "--address", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the Ray job server" in capsys.readouterr().err


def test_cli_routes_pretrain_with_ray_to_launch_and_submit_to_its_module(monkeypatch, capsys):
    assert cli.FLAG_ROUTES["pretrain"] == ("--ray", "launch.train")
    assert cli.main(["pretrain", "no-such.yaml", "--ray"]) == 2  # launch.train's config check
    assert "no-such.yaml: not found" in capsys.readouterr().err
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["submit", "stop", "raysubmit_x"]) == 2
    assert "hvdistill submit: no cluster given" in capsys.readouterr().err
