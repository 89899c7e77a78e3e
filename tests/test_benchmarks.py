"""Every benchmark stays importable as a module of the `benchmarks` package (import only, no run).

Benchmarks are run as `python -m benchmarks.bench_x` from the repository root and share helpers
by ordinary imports; none edits sys.path. Importing one must not run it.
"""

from __future__ import annotations

import importlib

import pytest

from tests.helpers import REPO_ROOT

MODULES = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


def test_benchmarks_are_found():
    assert "peak_memory" in MODULES and len(MODULES) > 5


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_without_path_edits(name):
    source = (REPO_ROOT / "benchmarks" / f"{name}.py").read_text()
    assert "sys.path" not in source, f"benchmarks/{name}.py edits sys.path; import benchmarks.* instead"
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__, f"benchmarks/{name}.py has no module docstring"
    if name.startswith("bench_"):
        assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
