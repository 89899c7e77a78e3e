"""What a submitted job carries: the working directory it uploads (and what never goes with it),
and the environment variables `--env` gives it (which names are allowed, which never are).

The upload leaves out the virtualenv, git, data, outputs and caches, and every file that holds
secrets by its name (`.env*`, keys and certificates, `.netrc`, `credentials*`, `.aws/`,
`.ssh/`, ...); patterns are gitignore-style, read by Ray's own matcher. An `--env` name that
makes a process load or run other code (LD_*, PYTHON* hooks, PATH, BASH_ENV, ...) is refused
whatever the flags; other names pass when they are on the allow-list or named by
`--allow-env`. No message here ever contains a variable's value.
"""

from __future__ import annotations

import os


class SubmitError(RuntimeError):
    """A submission that cannot go ahead, with what to do instead."""


UPLOAD_EXCLUDES = [  # anchored at the working dir's root ("/data/" is not hvdistill/data/)
    "/.venv/",
    "/.git/",
    "/data/",
    "/runs/",
    "/demo-output/",
    "/mlruns/",
    "/shards/",
    "*.egg-info/",
    "__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    # secrets never leave this machine with the code
    ".env",
    ".env.*",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    "credentials",
    "credentials.*",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".docker/",
    ".kube/",
]
# --env names that make a process load or run other code: refused whatever the flags
ENV_DENIED_NAMES = frozenset(
    {
        *("PATH", "HOME", "SHELL", "IFS", "ENV", "BASH_ENV", "PS4", "PROMPT_COMMAND", "SHELLOPTS"),
        *("BASHOPTS", "NODE_OPTIONS", "PERL5OPT", "PERL5LIB", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS"),
        *("_JAVA_OPTIONS", "GCONV_PATH", "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL"),
    }
)
ENV_DENIED_PREFIXES = ("LD_", "DYLD_", "MALLOC_", "PYTHON")  # PYTHON*: PYTHONPATH, PYTHONSTARTUP, ...
# --env names a job may set without --allow-env
ENV_ALLOWED_PREFIXES = (
    *("TORCH_", "TORCHINDUCTOR_", "PYTORCH_", "CUDA_", "CUDNN_", "CUBLAS_", "NCCL_", "GLOO_", "NVIDIA_"),
    *("OMP_", "MKL_", "OPENBLAS_", "KMP_", "MLFLOW_", "AWS_", "GOOGLE_", "GCS_", "HF_", "HVDISTILL_"),
)
ENV_ALLOWED_NAMES = frozenset(
    {
        *("PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONFAULTHANDLER", "TZ", "LANG", "LC_ALL", "TMPDIR"),
        *("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"),
        *("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"),
    }
)


def env_problem(key: str, allowed: set[str]) -> str:
    """Why `--env KEY` is refused ("" when it is not): denied outright, or not on the allow-list."""
    if key in ENV_ALLOWED_NAMES:
        return ""
    if key in ENV_DENIED_NAMES or key.startswith(ENV_DENIED_PREFIXES):
        return (
            f"--env {key}: refused, it makes the job's processes load or run other code; put what you "
            f"need into the code or the cluster's image instead"
        )
    if key.startswith(ENV_ALLOWED_PREFIXES) or key in allowed:
        return ""
    return (
        f"--env {key}: not on the allow-list ({', '.join(p + '*' for p in ENV_ALLOWED_PREFIXES[:6])}, ...); "
        f"if the job needs it, add --allow-env {key}"
    )


def job_env(items: list[str], allowed: list[str] | None = None) -> dict[str, str]:
    """`--env KEY=VALUE` / `--env KEY` (this shell's value) as the job's env_vars; no message ever
    shows a value."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not key.replace("_", "a").isalnum():
            raise SubmitError(
                f"--env: {key!r} is not a variable name; give KEY=VALUE or KEY, KEY of letters, digits, _"
            )
        problem = env_problem(key, set(allowed or []))
        if problem:
            raise SubmitError(problem)
        if not sep:
            if key not in os.environ:
                raise SubmitError(f"--env {key}: not set in this shell; give --env {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env
