"""Shared test helpers (not test modules): the synthetic world, gloo process groups, repo paths.

Test modules import from here, never from another test module; fixtures built on these live
in the conftest.py files. Paths are resolved from the repository root, never from the cwd.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"


def config_path(name: str) -> str:
    """The path of configs/<name> (e.g. "tiny.yaml"), independent of the working directory."""
    path = CONFIGS / name
    assert path.is_file(), f"no config {path}"
    return str(path)
