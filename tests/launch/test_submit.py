"""`hvdistill submit`, the parts that need no cluster: token lookup, the job request, refusals (env
names, secrets in the upload, a sqlite store for a multi-node cluster, asked from a local stand-in of
the dashboard's state API).

The job actually running on a `ray start` cluster is tests/launch/test_submit_cluster.py.
"""

from __future__ import annotations

import json
import shlex
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hvdistill import cli
from launch.submit import (
    UPLOAD_EXCLUDES,
    SubmitError,
    auth_headers,
    auth_token,
    build_parser,
    cluster_nodes,
    job_request,
    main,
    sqlite_problem,
)

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
    monkeypatch.setenv("HVDISTILL_TEST_VALUE", "from-shell")
    request, _ = request_for("--env", "TORCH_EXTENSIONS_DIR=/mnt/shared/ext", "--env", "HVDISTILL_TEST_VALUE")
    assert request["runtime_env"]["env_vars"] == {
        "TORCH_EXTENSIONS_DIR": "/mnt/shared/ext",
        "HVDISTILL_TEST_VALUE": "from-shell",
    }
    monkeypatch.delenv("HVDISTILL_TEST_VALUE")
    assert main(["pretrain", "configs/tiny.yaml", *ABS, "--env", "HVDISTILL_TEST_VALUE"]) == 2
    assert "not set in this shell" in capsys.readouterr().err


SECRET = "s3cr3t-value-never-printed"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (f"LD_PRELOAD=/tmp/{SECRET}.so", "--env LD_PRELOAD: refused"),
        (f"PYTHONPATH=/{SECRET}", "--env PYTHONPATH: refused"),
        (f"PATH=/{SECRET}", "--env PATH: refused"),
        (f"BASH_ENV=/{SECRET}", "--env BASH_ENV: refused"),
        (f"DYLD_INSERT_LIBRARIES={SECRET}", "--env DYLD_INSERT_LIBRARIES: refused"),
        (f"MY_TOKEN={SECRET}", "--env MY_TOKEN: not on the allow-list"),
        (f"BAD-NAME={SECRET}", "is not a variable name"),
    ],
)
def test_env_names_off_the_allow_list_are_refused_without_echoing_the_value(
    monkeypatch, capsys, item, message
):
    monkeypatch.chdir(REPO)
    assert (
        main(["pretrain", "configs/tiny.yaml", *ABS, "--env", item, "--address", "http://127.0.0.1:1"]) == 2
    )
    captured = capsys.readouterr()
    assert message in captured.err and SECRET not in captured.err + captured.out


def test_allow_env_admits_a_name_but_never_a_denied_one(monkeypatch):
    monkeypatch.chdir(REPO)
    request, _ = request_for("--env", "MY_FLAG=1", "--allow-env", "MY_FLAG", "--env", "HF_HOME=/mnt/hf")
    assert request["runtime_env"]["env_vars"] == {"MY_FLAG": "1", "HF_HOME": "/mnt/hf"}
    args = build_parser().parse_args(["pretrain", "configs/tiny.yaml", *ABS, "--env", "LD_PRELOAD=x"])
    args.allow_env = ["LD_PRELOAD"]
    with pytest.raises(SubmitError, match="LD_PRELOAD: refused"):
        job_request(args)


def test_secrets_are_not_uploaded_with_the_working_directory(tmp_path):
    """What Ray itself would upload (its own walk and matcher), given UPLOAD_EXCLUDES."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    kept = ["hvdistill/cli.py", "configs/tiny.yaml", "hvdistill/data/keys.py", "docs/credentials-howto.md"]
    secret = [".env", ".env.local", "sub/.env.production", ".envrc", "certs/server.pem", "server.key",
              "id_rsa", "id_ed25519.pub", ".netrc", ".git-credentials", "credentials", "credentials.json",
              ".aws/credentials", ".ssh/config", "runs/x/backbone.pt"]  # fmt: skip
    for name in kept + secret:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    uploaded: list[str] = []
    handler = lambda p: p.is_file() and uploaded.append(p.relative_to(tmp_path).as_posix())  # noqa: E731
    _dir_travel(tmp_path, [_get_excludes(tmp_path, UPLOAD_EXCLUDES)], handler, include_gitignore=False)
    assert sorted(uploaded) == sorted(kept)


def test_a_sqlite_store_is_refused_for_a_cluster_of_several_nodes(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with state_api(nodes=["ALIVE", "ALIVE", "DEAD", "ALIVE"]) as address:
        assert cluster_nodes(address) == 3
        assert main(["pretrain", "configs/tiny.yaml", *ABS, "--address", address]) == 2
        err = capsys.readouterr().err
        assert "tracking.uri: '' (sqlite in the run directory) is one sqlite file" in err and "3 nodes" in err
        sweep = ["sweep", "configs/tiny.yaml", "finetune.output_dir=/mnt/shared/ft", "data.shards=[/mnt/s]"]
        assert main([*sweep, "tracking.uri=sqlite:////mnt/shared/m.db", "--address", address]) == 2
        assert "'sqlite:////mnt/shared/m.db' is one sqlite file" in capsys.readouterr().err
    assert sqlite_problem("http://10.0.0.1:5000", 3) == "" and sqlite_problem("", 1) == ""
    assert sqlite_problem("", None) == ""  # unknown: warned, not refused
    with state_api(nodes=["ALIVE"]) as address:
        assert cluster_nodes(address) == 1
    assert cluster_nodes("http://127.0.0.1:9") is None


@contextmanager
def state_api(nodes: list[str]):
    """An HTTP server answering Ray 2.60's `GET /api/v0/nodes` (state_head.list_nodes' reply shape)
    with the given node states; other paths 404. Yields its address."""
    rows = [{"node_id": f"n{i}", "state": state} for i, state in enumerate(nodes)]
    body = json.dumps({"result": True, "msg": "", "data": {"result": {"total": len(rows), "result": rows}}})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            ok = self.path.startswith("/api/v0/nodes")
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode() if ok else b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
