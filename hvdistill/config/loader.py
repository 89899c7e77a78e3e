"""Loading machinery for the typed config: YAML diffs, dotted overrides, type checks.

Works on any tree of dataclasses. Values are parsed with `yaml.safe_load` (so `1e-3`, `true`,
`[1, 2]` read naturally), checked against the field's annotation, and coerced only where it
loses nothing (int -> float). A float must be finite: YAML's `.nan` / `.inf` (and `1e999`) are
refused for every float field, in lists too, so no run starts with a NaN learning rate. Every
problem is returned as one line that names the key and the fix; callers raise them together in a
`ConfigError`. The section modules beside this one share its small range and pair checks, and
`check_name`, the one rule for values that become file or directory names (run names, sweep
names, tags): letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most
`MAX_NAME_CHARS`, so no name is absolute, holds a `/` or climbs out with `..`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """All problems of a config at once, each naming its key and fix: one problem is one line,
    several are counted and listed one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} config problem(s):\n{lines}")


_MISSING = object()
MAX_NAME_CHARS = 100  # a name becomes one path component; file systems allow 255 bytes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _suggest(name: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return f"valid keys here: {', '.join(sorted(options))}"


def coerce(value: Any, tp: Any, key: str) -> tuple[Any, str | None]:
    """Return (value converted to `tp`, None) or (None, problem message)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value, None
    if origin is typing.Literal:
        if value in args:
            return value, None
        return None, f"{key}: {value!r} is not one of {list(args)}; set {key}=<one of those>"
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            out, err = coerce(value, arg, key)
            if err is None:
                return out, None
        return None, f"{key}: {value!r} does not match {_type_name(tp)}"
    if tp is type(None):
        return (None, None) if value is None else (None, f"{key}: expected null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return None, f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}"
        obj = tp()
        problems = merge_mapping(obj, value, f"{key}.")
        return (obj, None) if not problems else (None, "; ".join(problems))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return None, f"{key}: expected a list, got {value!r}; write e.g. {key}=[1,2]"
        inner = args[0] if args else Any
        out, errs = [], []
        for i, item in enumerate(value):
            v, err = coerce(item, inner, f"{key}[{i}]")
            (errs.append(err) if err else out.append(v))
        return (out, None) if not errs else (None, "; ".join(errs))
    if tp is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"{key}: expected true/false, got {value!r}"
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, f"{key}: expected an integer, got {value!r}"
    if tp is float:
        return _float(value, key)
    if tp is str:
        if isinstance(value, str):
            return value, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML read a number: `00` became 0, `1.10` became 1.1; what was written is lost
            return None, (
                f"{key}: expected a string, got the number {value!r} (unquoted YAML reads 00 as 0 and "
                f"1.10 as 1.1); quote it as written, e.g. ['00', '08']"
            )
        return None, f"{key}: expected a string, got {value!r}"
    return None, f"{key}: unsupported type {_type_name(tp)}"


def _float(value: Any, key: str) -> tuple[float | None, str | None]:
    """A finite float from a YAML number (or a string YAML 1.1 left unparsed, such as `1e-3`)."""
    parsed = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            parsed = float(value)
        except OverflowError:  # an integer beyond float range
            parsed = math.inf
    elif isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            parsed = None
    if parsed is None:
        return None, f"{key}: expected a number, got {value!r}"
    if not math.isfinite(parsed):
        return None, f"{key}: {value!r} is not a finite number; give a finite value, e.g. {key}=0.1"
    return parsed, None


def merge_mapping(obj: Any, mapping: dict, prefix: str = "") -> list[str]:
    """Merge a nested dict into dataclass `obj` in place; return every problem found."""
    problems: list[str] = []
    hints = _hints(obj)
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if name not in names:
            problems.append(f"{key}: unknown key; {_suggest(str(name), names, prefix)}")
            continue
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            problems += merge_mapping(current, value, f"{key}.")
            continue
        out, err = coerce(value, tp, key)
        if err:
            problems.append(err)
        else:
            setattr(obj, name, out)
    return problems


def load_yaml_diff(cfg: Any, path: str) -> list[str]:
    """Merge the YAML file at `path` into `cfg`; return problems (file errors included)."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        return [f"config file {path}: {what}; give a path to a YAML file such as configs/demo.yaml"]
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        return [f"config file {path}: not valid YAML ({exc}); fix the syntax at the line shown"]
    except (OSError, UnicodeDecodeError) as exc:
        return [f"config file {path}: unreadable ({type(exc).__name__}: {exc}); give a UTF-8 YAML file"]
    if not isinstance(data, dict):
        return [f"config file {path}: the top level must be a mapping of sections"]
    return merge_mapping(cfg, data)


def _resolve_parent(cfg: Any, parts: list[str], key: str) -> tuple[Any, str | None]:
    """Walk `parts[:-1]` from `cfg`; list items are addressed by index (`data.sources.0.root`)."""
    obj = cfg
    walked = ""
    for part in parts[:-1]:
        if isinstance(obj, list) and dataclasses.is_dataclass(obj[0] if obj else None):
            if not part.isdigit() or int(part) >= len(obj):
                return None, (
                    f"{key}: '{walked}{part}' is not an index of the {len(obj)} item(s) "
                    f"of '{walked.rstrip('.')}'; use 0..{len(obj) - 1}"
                )
            obj = obj[int(part)]
        elif not dataclasses.is_dataclass(obj):
            return None, f"{key}: '{walked.rstrip('.')}' is not a section; it has no sub-keys"
        else:
            names = [f.name for f in dataclasses.fields(obj)]
            if part not in names:
                return None, f"{key}: unknown key '{walked}{part}'; {_suggest(part, names, walked)}"
            obj = getattr(obj, part)
        walked += f"{part}."
    if not dataclasses.is_dataclass(obj):
        return None, f"{key}: '{walked.rstrip('.')}' is not a section; it has no sub-keys"
    return obj, None


def apply_overrides(cfg: Any, overrides: list[str]) -> list[str]:
    """Apply `a.b.c=value` strings in order; return every problem found."""
    problems: list[str] = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}': expected key.sub=value, e.g. optim.lr=0.1")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        parent, err = _resolve_parent(cfg, parts, key)
        if err:
            problems.append(err)
            continue
        problems += merge_mapping(parent, {parts[-1]: value}, key[: -len(parts[-1])])
    return problems


def flatten_dataclass(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flat `{"section.key": value}`; lists of dataclasses are indexed `a.0.b`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten_dataclass(value, f"{key}."))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                out.update(flatten_dataclass(item, f"{key}.{i}."))
        else:
            out[key] = value
    return out


def check_range(problems: list[str], key: str, value: float, lo: float, hi: float) -> None:
    """Append a problem when `value` lies outside [lo, hi] (the section checks share this)."""
    if not lo <= value <= hi:
        problems.append(f"{key}: {value} is outside [{lo}, {hi}]; set {key}=<value in range>")


def check_pair(problems: list[str], key: str, pair: list[float]) -> None:
    """Append a problem unless `pair` is [low, high] with low <= high."""
    if len(pair) != 2 or pair[0] > pair[1]:
        problems.append(f"{key}: expected [low, high] with low <= high, got {pair}")


def check_name(problems: list[str], key: str, name: str) -> None:
    """Append a problem unless `name` is usable as one path component (the module docstring's rule)."""
    if _NAME.fullmatch(name) and len(name) <= MAX_NAME_CHARS:
        return
    problems.append(
        f"{key}: {name!r} must be a plain name of letters, digits, '.', '_' or '-' (starting with a letter "
        f"or digit, at most {MAX_NAME_CHARS} characters; no '/', no '..'): it names a directory inside "
        f"the output directory, which the *_dir keys choose"
    )
