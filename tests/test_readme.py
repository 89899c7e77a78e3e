"""The README keeps its promises: the two commands, and one line for every module."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_the_two_commands_and_every_module():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    modules = [
        p.relative_to(ROOT).as_posix()
        for d in ("hvdistill", "sharding", "launch")
        for p in sorted((ROOT / d).rglob("*.py"))
    ]
    missing = [m for m in modules if f"`{m}`" not in readme]
    assert not missing, f"README.md has no line for: {missing}"


def test_every_module_has_a_docstring():
    import ast

    bare = [
        p.relative_to(ROOT).as_posix()
        for d in ("hvdistill", "sharding", "launch", "benchmarks")
        for p in (ROOT / d).rglob("*.py")
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not bare, f"modules without a docstring: {bare}"
