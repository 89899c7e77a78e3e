"""Every config key the docs name exists: backticked and fenced `section.key` names in docs/ and README.md.

A name that is not a config key but a Python object of the package (`geometry.frustum.frustum_cells`,
`dist.all_reduce_sum`) is accepted as such; a code block that shows a config error (it contains
"config problem") shows wrong keys on purpose and is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re

from hvdistill.config import SECTIONS, Config
from tests.helpers import REPO_ROOT

FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "txt", "png", "tar", "sh"}
# a key starts at a section name not preceded by a word, a dot or a path separator, and has at
# least one more component: a name, a list index, or a `*` / `[*]` wildcard
KEY = re.compile(
    r"(?<![\w./-])(" + "|".join(SECTIONS) + r")((?:\.(?:[a-z_][a-z0-9_]*\*?|\d+|\*)|\[(?:\d+|\*)\])+)"
)
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)


def doc_files() -> list:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def named_keys(text: str) -> list[str]:
    """Dotted config keys inside the code spans and fenced blocks of a markdown text."""
    keys = []
    for span in CODE.findall(text):
        if "config problem" in span:
            continue
        for section, rest in KEY.findall(span):
            key = section + rest
            if key.rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                keys.append(key)
    return keys


def resolves(key: str) -> bool:
    """Whether `key` names a field (or property) of the Config tree; indices and `*` allowed."""
    obj: object = Config()
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(obj, list):
            if not (part == "*" or part.isdigit()) or not obj:
                return False
            obj = obj[0]
        elif dataclasses.is_dataclass(obj):
            names = {f.name for f in dataclasses.fields(obj)}
            if part.endswith("*"):  # `augment.crop_*`: some field with that prefix
                return any(n.startswith(part[:-1]) for n in names)
            if part not in names and not isinstance(getattr(type(obj), part, None), property):
                return False
            obj = getattr(obj, part)
        else:
            return False  # a leaf value has no sub-keys
    return True


def is_package_object(key: str) -> bool:
    """Whether `key` is a module or module attribute of hvdistill (`dist.all_reduce_sum`)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        name = "hvdistill." + ".".join(parts[:i])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(name)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_key_scanner_finds_and_rejects_what_it_should():
    text = (
        "see `data.sources.0.root=/x` and `sweep.label_fractions[*]`, `optim.lrr`, `cfg.optim.lr`, `model.py`"
    )
    text += "\n```\nhvdistill synth --out DIR synth.scenes=2 geometry.min_depth=1\n```"
    keys = named_keys(text)
    assert keys == [
        "data.sources.0.root",
        "sweep.label_fractions[*]",
        "optim.lrr",
        "synth.scenes",
        "geometry.min_depth",
    ]
    assert [resolves(k) for k in keys] == [True, True, False, True, False]
    assert resolves("data.sources[*].weight") and resolves("geometry.depth_bins") and resolves("synth.*")
    assert not resolves("optim.lr.x") and not resolves("data.sources.root")
    assert resolves("augment.crop_*") and not resolves("augment.cropp_*")
    assert is_package_object("geometry.frustum.frustum_cells") and is_package_object("dist.all_reduce_sum")
    assert not is_package_object("geometry.min_depth") and not is_package_object("optim.lr")
    assert named_keys("```\nhvdistill config: 1 config problem(s):\n  - optim.lrr: unknown key\n```") == []


def test_every_config_key_named_in_the_docs_exists():
    missing = [
        f"{path.relative_to(REPO_ROOT)}: `{key}`"
        for path in doc_files()
        for key in named_keys(path.read_text())
        if not resolves(key) and not is_package_object(key)
    ]
    assert not missing, "docs name config keys that do not exist:\n  " + "\n  ".join(missing)


def test_the_docs_name_config_keys_at_all():
    assert sum(len(named_keys(p.read_text())) for p in doc_files()) > 50
