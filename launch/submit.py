"""`hvdistill submit`: pretraining as a Ray job on a cluster, and the job's status, logs and stop.

    hvdistill submit pretrain CONFIG [key=value ...] --address http://HOST:8265
                     [--working-dir DIR | --no-upload] [--env KEY[=VALUE] ...] [--no-follow]
    hvdistill submit sweep CONFIG [key=value ...] --address http://HOST:8265 [same options]
    hvdistill submit status JOB_ID --address http://HOST:8265
    hvdistill submit logs JOB_ID --address http://HOST:8265 [--follow]
    hvdistill submit stop JOB_ID --address http://HOST:8265

`submit pretrain` checks the config here first (a typo fails in a second, not after the job
started), fixes `train.run_name` (so the run directory is known before the job runs) and
submits `python -m hvdistill.cli pretrain CONFIG ... train.run_name=NAME --ray --address auto`
through Ray's JobSubmissionClient. It prints the job id and the run directory, then follows the
job's logs until it ends (exit 0 only when the job SUCCEEDED); Ctrl-C stops following, not the job.
`submit sweep` does the same for `hvdistill sweep` (launch/sweep.py): it fixes `sweep.name` (the
sweep directory; submit it again with that name to finish missing trials) and submits
`python -m hvdistill.cli sweep CONFIG ... sweep.name=NAME --address auto`.

Code: by default the working directory (the project checkout you run from) is uploaded as the
job's `working_dir`, without .venv, .git, data, runs, demo-output, mlruns and shards, and
without secrets: `.env` / `.env.*` / `.envrc`, key and certificate files (`*.pem`, `*.key`,
`*.p12`, `id_rsa*`, ...), `.netrc`, `.git-credentials`, `credentials*` files and the `.aws/`,
`.ssh/`, `.gnupg/` folders (`UPLOAD_EXCLUDES`, launch/job_contents.py). The job runs exactly
the code you have; the cluster provides the dependencies (the same pins, installed in the
image). `--no-upload` runs the hvdistill installed on the cluster instead; then CONFIG is a path
on the cluster.

`--env KEY=VALUE` (or `--env KEY`, this shell's value) sets an environment variable for the job
and its workers. Names that make a process load or run other code (LD_PRELOAD and every LD_* /
DYLD_*, PATH, PYTHONPATH and the other PYTHON* hooks, BASH_ENV, NODE_OPTIONS, ...;
launch/job_contents.py) are always refused. Other names must be on the allow-list
(TORCH_*, CUDA_*, NCCL_*, OMP_*, MLFLOW_*, AWS_*, GOOGLE_*, HF_*, HVDISTILL_*, proxies, ...) or
be named once more with `--allow-env NAME`. Values are never printed: an error names the
variable only. (Ray shows a job's runtime_env, values included, to anyone who can read the
dashboard: prefer credentials the cluster already holds.)

Tracking on a cluster: a sqlite store (`tracking.uri` empty, the default, = sqlite in the run
or sweep directory, or a sqlite:/// URI) is refused for a cluster of more than one node, since
processes on several nodes (the driver on the head, rank 0 or the sweep's trials anywhere) would
write one sqlite file over shared storage, where its locking is unreliable. The node count is
asked from the dashboard before submitting (Ray's state API, `GET /api/v0/nodes`, alive nodes);
when it does not answer, a warning says so and the job is submitted. A cluster that autoscales
from a single head passes this check: give such a cluster an MLflow server too.

Paths the run reads or writes (`train.output_dir`, `dist.storage_path`, `data.shards`,
`model.image.weights`) must be absolute: the job runs in a temporary copy of the working
directory that Ray deletes; on a cluster they live on storage every node mounts.

Token authentication (on by default in Ray 2.60): the dashboard refuses requests without the
cluster's token. The token is taken from RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (where `ray start` on this machine writes it), and
sent as `Authorization: Bearer <token>`; RAY_AUTH_MODE=disabled sends none. For a remote
cluster copy its token once: `export RAY_AUTH_TOKEN=$(ssh HEAD ray get-auth-token)`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, load_config
from launch.job_contents import UPLOAD_EXCLUDES, SubmitError, job_env
from launch.train import new_run_name

NODES_TIMEOUT_S = 10.0  # the dashboard's answer to the node count
TOKEN_FILE = Path("~/.ray/auth_token")  # where `ray start` writes the cluster token
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # what JobSubmissionClient reads too
EXIT_INTERRUPTED = 130


def auth_token() -> str | None:
    """The cluster token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH's file, ~/.ray/auth_token; None if none."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    return None


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <token>` when a token is found, else nothing."""
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None) -> Any:
    """A JobSubmissionClient for `address` (or RAY_API_SERVER_ADDRESS / RAY_ADDRESS), token attached."""
    if not address and not any(os.environ.get(v) for v in ADDRESS_ENV):
        raise SubmitError("no cluster given: pass --address http://HOST:8265 (the head node's dashboard)")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as exc:  # connection refused, auth refused: Ray raises several kinds
        raise SubmitError(f"cannot reach the Ray job server at {address}: {_explain(exc)}") from exc


def _explain(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "401" in text or "403" in text or "uthentication" in text:
        text += (
            "\n  the cluster wants its token: export RAY_AUTH_TOKEN=$(ssh HEAD ray get-auth-token), "
            "or RAY_AUTH_TOKEN_PATH=<file>"
        )
    return text


def _relative_paths(cfg: Config) -> list[str]:
    """The run's path settings that are relative (they would resolve in the job's temporary copy)."""
    paths = {
        "train.output_dir": cfg.train.output_dir,
        "dist.storage_path": cfg.dist.storage_path,
        "model.image.weights": "" if cfg.model.image.random_init else cfg.model.image.weights,
        **{f"data.shards.{i}": s for i, s in enumerate(cfg.data.shards)},
    }
    return [
        f"{key}: {value!r} is relative; the job runs in a temporary copy of the working directory, "
        f"so give an absolute path on storage every node sees (e.g. /mnt/shared/...)"
        for key, value in paths.items()
        if value and "://" not in value and not Path(value).is_absolute()
    ]


def _config_argument(config: str, working_dir: Path | None) -> str:
    """CONFIG as the job sees it: relative to the uploaded working dir, or as given (--no-upload)."""
    if working_dir is None:
        return config
    path = Path(config).resolve()
    if not path.is_file():
        raise SubmitError(f"config file {config}: not found")
    try:
        return path.relative_to(working_dir).as_posix()
    except ValueError:
        raise SubmitError(
            f"config file {config} is outside the uploaded working directory {working_dir}; "
            f"move it inside, or pass --working-dir"
        ) from None


def _dashboard(address: str | None) -> str:
    """The dashboard's URL: `address` or RAY_API_SERVER_ADDRESS / RAY_ADDRESS, http:// added; "" if none."""
    base = address or next((os.environ[v] for v in ADDRESS_ENV if os.environ.get(v)), "")
    return base if not base or "://" in base else f"http://{base}"


def cluster_nodes(address: str | None) -> int | None:
    """Alive nodes of the cluster behind the dashboard `address` (Ray's state API); None when it
    does not answer in that form."""
    import requests

    base = _dashboard(address)
    if not base:
        return None
    try:
        answer = requests.get(
            base.rstrip("/") + "/api/v0/nodes", params={"limit": 10000}, headers=auth_headers(),
            timeout=NODES_TIMEOUT_S,
        )  # fmt: skip
        rows = answer.json()["data"]["result"]["result"]
    except Exception:  # noqa: BLE001 - no answer, another Ray, another shape: the count is unknown
        return None
    if not isinstance(rows, list):
        return None
    return sum(1 for n in rows if isinstance(n, dict) and n.get("state") == "ALIVE")


def sqlite_problem(uri: str, nodes: int | None) -> str:
    """Why a sqlite tracking store cannot serve a job on `nodes` nodes ("" when it can)."""
    if (uri and not uri.startswith("sqlite:")) or nodes is None or nodes <= 1:
        return ""
    store = "'' (sqlite in the run directory)" if not uri else repr(uri)
    return (
        f"tracking.uri: {store} is one sqlite file, and the cluster has {nodes} nodes: processes on "
        f"several of them would write it over shared storage, where sqlite's locking is unreliable; run "
        f"an MLflow server and set tracking.uri=http://<the head's private address>:5000 (docs/cluster.md, "
        f"'A tracking server')"
    )


def check_tracking_store(uri: str, address: str | None) -> None:
    """Refuse a sqlite store on a multi-node cluster (SubmitError); warn when the count is unknown."""
    if (uri and not uri.startswith("sqlite:")) or not _dashboard(address):
        return  # a server store; or no cluster given, which submitting reports
    nodes = cluster_nodes(address)
    if nodes is None:
        print(
            "submit: warning: the dashboard did not say how many nodes the cluster has; a sqlite "
            "tracking.uri is only safe on one node",
            file=sys.stderr,
        )
    problem = sqlite_problem(uri, nodes)
    if problem:
        raise SubmitError(problem)


def job_request(args: argparse.Namespace) -> tuple[dict[str, Any], str, Config]:
    """(submit_job keyword arguments, run name, checked config) for `submit pretrain`."""
    cfg = load_config(args.config, list(args.overrides), sections=RUN_SECTIONS["pretrain"])
    problems = _relative_paths(cfg)
    if problems:
        raise ConfigError(problems)
    run_name = cfg.train.run_name or new_run_name()
    request = _request(
        args, "pretrain", f"train.run_name={run_name}", ["--ray"], {"hvdistill.run_name": run_name}
    )
    return request, run_name, cfg


def _request(
    args: argparse.Namespace, verb: str, name_override: str, flags: list[str], metadata: dict[str, str]
) -> dict[str, Any]:
    """submit_job keyword arguments running `hvdistill VERB CONFIG ... NAME_OVERRIDE FLAGS --address auto`
    in the uploaded working directory (unless --no-upload), with the --env variables."""
    working_dir = None if args.no_upload else Path(args.working_dir).resolve()
    key = name_override.split("=", 1)[0] + "="
    overrides = [o for o in args.overrides if not o.startswith(key)]  # the fixed name replaces the user's
    command = ["python", "-m", "hvdistill.cli", verb, _config_argument(args.config, working_dir)]
    command += [*overrides, name_override, *flags, "--address", "auto"]
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        runtime_env = {"working_dir": str(working_dir), "excludes": list(UPLOAD_EXCLUDES)}
    env_vars = job_env(args.env, args.allow_env)
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return {
        "entrypoint": shlex.join(command),
        "runtime_env": runtime_env,
        "metadata": {**metadata, "hvdistill.config": args.config},
    }


def _sweep_relative_paths(cfg: Config) -> list[str]:
    """The sweep's path settings that are relative (see `_relative_paths`)."""
    from hvdistill.config.downstream import RANDOM_INIT

    paths = {
        "finetune.output_dir": cfg.finetune.output_dir,
        **{f"data.shards.{i}": s for i, s in enumerate(cfg.data.shards)},
        **{f"sweep.checkpoints.{i}": c for i, c in enumerate(cfg.sweep.checkpoints) if c != RANDOM_INIT},
    }
    return [
        f"{key}: {value!r} is relative; the job runs in a temporary copy of the working directory, "
        f"so give an absolute path on storage every node sees (e.g. /mnt/shared/...)"
        for key, value in paths.items()
        if value and "://" not in value and not value.startswith("runs:/") and not Path(value).is_absolute()
    ]


def sweep_request(args: argparse.Namespace) -> tuple[dict[str, Any], str, Path, Config]:
    """(submit_job keyword arguments, sweep name, sweep directory, checked config) for `submit sweep`."""
    from launch.sweep import load_sweep_config, prepare_config

    cfg = load_sweep_config(args.config, list(args.overrides))
    problems = _sweep_relative_paths(cfg)
    if problems:
        raise ConfigError(problems)
    name = prepare_config(cfg).sweep.name
    request = _request(args, "sweep", f"sweep.name={name}", [], {"hvdistill.sweep": name})
    return request, name, Path(cfg.finetune.output_dir) / name, cfg


def follow(jobs: Any, job_id: str) -> str:
    """Print the job's logs as they come until it ends; return its final status."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(jobs.get_job_status(job_id))


def cmd_pretrain(args: argparse.Namespace) -> int:
    request, run_name, cfg = job_request(args)
    if cfg.tracking.enabled:
        check_tracking_store(cfg.tracking.uri, args.address)
    return _submit(args, request, f"run directory {Path(cfg.train.output_dir) / run_name}")


def cmd_sweep(args: argparse.Namespace) -> int:
    request, name, sweep_dir, cfg = sweep_request(args)
    check_tracking_store(cfg.tracking.uri, args.address)
    return _submit(args, request, f"sweep directory {sweep_dir} (sweep.name={name})")


def _submit(args: argparse.Namespace, request: dict[str, Any], where: str) -> int:
    """Submit, print the job id and where its results go, follow the logs unless --no-follow."""
    jobs = client(args.address)
    job_id = jobs.submit_job(**request)
    print(f"submit: job {job_id} submitted to {args.address or 'the cluster in RAY_ADDRESS'}", flush=True)
    print(f"submit: {where} (on the cluster)", flush=True)
    later = f"--address {args.address}" if args.address else ""
    if args.no_follow:
        print(f"submit: follow it with `hvdistill submit logs {job_id} {later} --follow`")
        return 0
    try:
        status = follow(jobs, job_id)
    except KeyboardInterrupt:
        print(f"\nsubmit: job {job_id} keeps running; stop it: `hvdistill submit stop {job_id} {later}`")
        return EXIT_INTERRUPTED
    print(f"submit: job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    info = client(args.address).get_job_info(args.job_id)
    print(f"{args.job_id} {info.status}" + (f": {info.message}" if info.message else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    jobs = client(args.address)
    if args.follow:
        print(f"submit: job {args.job_id} {follow(jobs, args.job_id)}")
    else:
        print(jobs.get_job_logs(args.job_id), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    was_running = client(args.address).stop_job(args.job_id)
    print(f"{args.job_id}: " + ("stop requested" if was_running else "was not running"))
    return 0


def _job_parser(pre: argparse.ArgumentParser, func: Any) -> None:
    """The arguments `submit pretrain` and `submit sweep` share."""
    pre.add_argument("config", help="YAML diff over the default config")
    pre.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    upload = pre.add_mutually_exclusive_group()
    upload.add_argument(
        "--working-dir", default=".", help="directory uploaded as the job's code (default: .)"
    )
    upload.add_argument("--no-upload", action="store_true", help="run the hvdistill installed on the cluster")
    pre.add_argument(
        "--env", action="append", default=[], metavar="KEY[=VALUE]", help="environment variable for the job"
    )
    pre.add_argument(
        "--allow-env",
        action="append",
        default=[],
        metavar="KEY",
        help="allow an --env name off the allow-list",
    )
    pre.add_argument("--no-follow", action="store_true", help="print the job id and return")
    pre.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    for verb, func, text in (
        ("pretrain", cmd_pretrain, "submit `hvdistill pretrain CONFIG ... --ray` as a Ray job"),
        ("sweep", cmd_sweep, "submit `hvdistill sweep CONFIG ...` as a Ray job"),
    ):
        _job_parser(sub.add_parser(verb, help=text), func)
    for name, func, text in (
        ("status", cmd_status, "the job's status"),
        ("logs", cmd_logs, "the job's logs"),
        ("stop", cmd_stop, "stop the job"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job_id")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="follow until the job ends")
        cmd.set_defaults(func=func)
    for cmd in sub.choices.values():
        cmd.add_argument("--address", default=None, help="the head's dashboard, http://HOST:8265")
    return p


def main(argv: list[str] | None = None) -> int:
    """`hvdistill submit pretrain|sweep|status|logs|stop ...`; 2 for a config or usage problem."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hvdistill submit: {exc}", file=sys.stderr)
        return 2
    except SubmitError as exc:
        print(f"hvdistill submit: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the job server's answer: unknown job id, refused request
        print(f"hvdistill submit: {_explain(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
