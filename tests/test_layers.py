"""The import layer rules as a test (dependencies point down): every import in hvdistill/, sharding/, launch/.

Imports are read with `ast` from the source, not by importing it: module-level imports,
imports inside functions and classes, imports under `if TYPE_CHECKING:` and
`importlib.import_module("literal")` calls all count, and relative imports are resolved
against the importing module's package. TYPE_CHECKING imports count on purpose: a type
named from a higher layer is still a dependency pointing up (the distiller's output type
must not live in losses/ even if only annotations named it), and a rule about a third-party
package (spconv, ray, ...) is about where its names may appear at all.

A break is reported as `path:line: <the import> (-> resolved.module) breaks: <the rule>`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("hvdistill", "sharding", "launch")


@dataclass(frozen=True)
class Import:
    """One imported module as the source names it, resolved to an absolute dotted name."""

    line: int
    statement: str  # the import as written (unparsed)
    target: str  # absolute dotted name: `from a.b import c` -> "a.b.c"
    lazy: bool  # inside a function body (executed only when the function runs)


@dataclass(frozen=True)
class Rule:
    text: str  # the rule as the error states it
    applies: Callable[[str, Import], bool]  # (importing file's repo path, the import)
    forbidden: Callable[[str], bool]  # on the imported module's dotted name


def within(target: str, *packages: str) -> bool:
    """Whether `target` is one of `packages` or inside one of them."""
    return any(target == p or target.startswith(p + ".") for p in packages)


def under(path: str, *folders: str) -> bool:
    return any(path.startswith(f.rstrip("/") + "/") for f in folders)


TRAINING_PATH_EXEMPT = ("hvdistill/cli.py",)  # dispatches `hvdistill synth` by name

RULES = [
    Rule(
        "spconv is imported only in hvdistill/models/lidar/",
        lambda path, imp: not under(path, "hvdistill/models/lidar"),
        lambda t: within(t, "spconv"),
    ),
    Rule(
        "ray is imported only in sharding/ and launch/",
        lambda path, imp: not under(path, "sharding", "launch"),
        lambda t: within(t, "ray"),
    ),
    Rule(
        "deepspeed is imported only in hvdistill/train/engine.py",
        lambda path, imp: path != "hvdistill/train/engine.py",
        lambda t: within(t, "deepspeed"),
    ),
    Rule(
        "mlflow is imported only in hvdistill/tracking.py",
        lambda path, imp: path != "hvdistill/tracking.py",
        lambda t: within(t, "mlflow"),
    ),
    Rule(
        "object-store libraries (pyarrow.fs, fsspec, s3fs, gcsfs, boto3) are imported only in storage.py",
        lambda path, imp: path != "hvdistill/storage.py",
        lambda t: within(
            t, "pyarrow.fs", "pyarrow._fs", "pyarrow._s3fs", "fsspec", "s3fs", "gcsfs", "boto3", "botocore"
        ),
    ),
    Rule(
        "hvdistill/ never imports sharding or launch (only hvdistill/cli.py dispatches verbs to them)",
        lambda path, imp: under(path, "hvdistill") and path != "hvdistill/cli.py",
        lambda t: within(t, "sharding", "launch"),
    ),
    Rule(
        "hvdistill/cli.py imports sharding and launch lazily, inside the verb's dispatch",
        lambda path, imp: path == "hvdistill/cli.py" and not imp.lazy,
        lambda t: within(t, "sharding", "launch"),
    ),
    Rule(
        "hvdistill.models never imports hvdistill.losses (shared types live in hvdistill/loss_inputs.py)",
        lambda path, imp: under(path, "hvdistill/models"),
        lambda t: within(t, "hvdistill.losses"),
    ),
    Rule(
        "hvdistill.geometry imports nothing of the package but hvdistill.config",
        lambda path, imp: under(path, "hvdistill/geometry"),
        lambda t: within(t, "hvdistill") and not within(t, "hvdistill.config", "hvdistill.geometry"),
    ),
    Rule(
        "hvdistill.data never imports hvdistill.models",
        lambda path, imp: under(path, "hvdistill/data"),
        lambda t: within(t, "hvdistill.models"),
    ),
    Rule(
        "nothing on the training path imports hvdistill.synthetic (a dataset writer upstream of sharding)",
        lambda path, imp: not under(path, "hvdistill/synthetic") and path not in TRAINING_PATH_EXEMPT,
        lambda t: within(t, "hvdistill.synthetic"),
    ),
]


def module_name(path: str) -> str:
    """Dotted module of a repo-relative .py path ("a/b/__init__.py" -> "a.b")."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(node: ast.ImportFrom, path: str) -> str:
    """The absolute module of a `from ... import` (relative levels against `path`'s package)."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    if node.level - 1 >= len(package):
        raise ValueError(f"{path}:{node.lineno}: relative import goes above the top-level package")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_import_module_call(node: ast.AST) -> bool:
    """`importlib.import_module("x")` or `import_module("x")` / `__import__("x")` with a literal."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    if not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def _imports_of(node: ast.AST, path: str, lazy: bool) -> Iterator[Import]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield Import(node.lineno, ast.unparse(node), alias.name, lazy)
    elif isinstance(node, ast.ImportFrom):
        base = resolve(node, path)
        for alias in node.names:  # `from a import b` may import the submodule a.b
            yield Import(
                node.lineno, ast.unparse(node), base if alias.name == "*" else f"{base}.{alias.name}", lazy
            )
    elif _is_import_module_call(node):
        yield Import(node.lineno, ast.unparse(node), node.args[0].value, lazy)


def read_imports(source: str, path: str) -> list[Import]:
    """Every import in `source` (the file at repo path `path`), at any depth."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        found.extend(_imports_of(node, path, lazy))
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source, filename=path), lazy=False)
    return found


def violations(source: str, path: str) -> list[str]:
    """One message per (import, rule) it breaks."""
    return [
        f"{path}:{imp.line}: `{imp.statement}` (-> {imp.target}) breaks: {rule.text}"
        for imp in read_imports(source, path)
        for rule in RULES
        if rule.applies(path, imp) and rule.forbidden(imp.target)
    ]


def scanned_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_every_module_keeps_the_layer_rules():
    files = scanned_files()
    assert "hvdistill/models/distiller.py" in files and "sharding/job.py" in files  # the scan saw the tree
    broken = [msg for path in files for msg in violations((ROOT / path).read_text(), path)]
    assert not broken, "import rules broken:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("path", "source", "rule_words"),
    [
        ("hvdistill/models/distiller.py", "from hvdistill.losses.total import LossInputs\n", "losses"),
        ("hvdistill/models/distiller.py", "from ..losses import total\n", "losses"),  # relative, 2 levels
        ("hvdistill/models/depth/lift.py", "from ...losses.pooling import pool_superpixels\n", "losses"),
        ("hvdistill/models/distiller.py", "from .. import losses\n", "losses"),  # the package as a name
        (
            "hvdistill/models/distiller.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hvdistill.losses import X\n",
            "losses",
        ),
        ("hvdistill/data/collate.py", "def f():\n    import spconv.pytorch as spconv\n", "spconv"),
        ("hvdistill/data/shards.py", "import ray\n", "ray"),
        ("hvdistill/data/shards.py", "import importlib\nimportlib.import_module('ray.data')\n", "ray"),
        ("hvdistill/losses/total.py", "import deepspeed\n", "deepspeed"),
        ("hvdistill/train/loop.py", "from mlflow import log_metric\n", "mlflow"),
        ("hvdistill/data/shards.py", "from sharding.manifest import read_manifest\n", "sharding"),
        ("hvdistill/cli.py", "import sharding.cli\n", "lazily"),  # module level, not per verb
        ("hvdistill/geometry/voxel.py", "from hvdistill.data.sample import Sample\n", "geometry"),
        ("hvdistill/geometry/voxel.py", "from .. import batch\n", "geometry"),
        ("hvdistill/data/collate.py", "from hvdistill.models.lidar import student\n", "models"),
        ("hvdistill/data/__init__.py", "from ..models import distiller\n", "models"),
        ("launch/demo.py", "from hvdistill.synthetic import write_nuscenes\n", "synthetic"),
        ("sharding/job.py", "from hvdistill.synthetic.world import World\n", "synthetic"),
    ],
)
def test_the_checker_catches_a_break(path, source, rule_words):
    found = violations(source, path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:") and rule_words in found[0].split("breaks:")[1]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("hvdistill/models/lidar/sparse.py", "import spconv.pytorch as spconv\n"),
        ("sharding/job.py", "import ray\n"),
        ("hvdistill/cli.py", "def main():\n    import sharding.cli\n"),  # lazily, per verb
        (
            "hvdistill/geometry/frustum.py",
            "from hvdistill.config import GeometryConfig\nfrom .bev import BEVGrid\n",
        ),
        ("hvdistill/geometry/bev.py", "from hvdistill import config\n"),
        ("hvdistill/models/distiller.py", "from hvdistill.loss_inputs import LossInputs\n"),
        ("hvdistill/synthetic/frame.py", "from .world import World\n"),
        ("hvdistill/cli.py", "VERBS = {'synth': 'hvdistill.synthetic.cli'}\n"),
        ("hvdistill/train/engine.py", "import deepspeed\n"),
        ("hvdistill/tracking.py", "import mlflow\n"),
    ],
)
def test_the_checker_allows_what_the_rules_allow(path, source):
    assert violations(source, path) == []


def test_relative_imports_resolve_against_the_package():
    lines = "from . import a\nfrom .b import c\nfrom .. import d\nfrom ..e.f import g\n"
    module = [i.target for i in read_imports(lines, "hvdistill/data/collate.py")]
    package = [i.target for i in read_imports(lines, "hvdistill/data/__init__.py")]
    assert module == ["hvdistill.data.a", "hvdistill.data.b.c", "hvdistill.d", "hvdistill.e.f.g"]
    assert package == module  # an __init__ is its package: `.` is the package itself
    with pytest.raises(ValueError, match="above the top-level package"):
        read_imports("from ... import x\n", "hvdistill/cli.py")
