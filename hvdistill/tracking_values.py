"""What goes into a tracking store, decided without MLflow: the tags every run carries (host,
hardware, torch, git commit), config values as bounded param strings, MLflow's metric-name rule,
and batching to MLflow's per-call limits. hvdistill/tracking.py (the one module importing mlflow)
sends them."""

from __future__ import annotations

import json
import os
import platform
import posixpath
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hvdistill import __version__

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown by the MLflow UI
GIT_TIMEOUT_S = 10.0  # `git` on a slow shared disk; past it the commit tag is left out
_METRIC_NAME = re.compile(r"[/\w.\- :]+")
_T = TypeVar("_T")


def default_tags(world_size: int) -> dict[str, str]:
    """Tags every run carries: world size, host, hardware, torch, and the git commit when known."""
    import torch

    tags = {
        "world_size": str(world_size),
        "host": platform.node(),
        "hardware.cpu": _cpu_model(),
        "hardware.cpu_count": str(os.cpu_count()),
        "hardware.gpu": "none",
        "torch.version": torch.__version__,
        "hvdistill.version": __version__,
    }
    if torch.cuda.is_available():
        tags["hardware.gpu"] = torch.cuda.get_device_name(0)
        tags["hardware.gpu_count"] = str(torch.cuda.device_count())
        tags["torch.cuda"] = str(torch.version.cuda)
    git = _git_state()
    if git is not None:
        tags[GIT_COMMIT_TAG], tags["git.dirty"] = git
    return tags


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, lists and dicts as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def truncated(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with a visible marker saying how long it was."""
    if len(text) <= limit:
        return text
    marker = f"...[truncated: {len(text)} chars]"
    return text[: limit - len(marker)] + marker


def chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    """`items` in consecutive lists of at most `size` (MLflow's per-call batch limits)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def check_metric_name(name: str, limit: int) -> None:
    """MLflow's rule for a metric name (POSIX), checked here so a store error can only mean the store."""
    norm = posixpath.normpath(name)
    if (
        not (_METRIC_NAME.fullmatch(name) and len(name) <= limit)
        or norm != name
        or norm.startswith(("..", "/"))
    ):
        raise ValueError(
            f"tracking: metric name {name!r} is not valid in MLflow (at most {limit} of letters, digits, "
            f"_ - . : space and /; a normal relative path not starting with '..')"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state() -> tuple[str, str] | None:
    """(commit, "true"/"false" for uncommitted changes) of the repo holding this package, if any."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None  # installed into some other repository's tree
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, str(dirty).lower()
