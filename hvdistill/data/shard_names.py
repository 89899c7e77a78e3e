"""Shard names read from a manifest are data, never commands or paths: the one trust check.

A manifest is input. webdataset's opener runs any name starting with `pipe:` as a shell
command, and an absolute or `../` name would read any file, so every reader of a manifest
(the training reader, fine-tuning, `shard verify`) turns a name into a location only through
`resolve_shard_name` (local directories) or `resolve_shard_location` (local or object store):
the name must match the writer's own pattern (letters, digits, `_`, `-` and `.` separators,
ending in `.tar`; no scheme, no separator, no `..`) and, on local disk, the resolved file must
lie inside the shard directory (a symlink pointing out of it is refused too). An object store
has no symlinks: the checked name is appended to the manifest's own prefix, so it cannot name
an object anywhere else.

`ManifestError` lives here (re-exported by shard_index.py) so that an unsafe name is one kind
of refused manifest: `UnsafeShardName` is a `ManifestError`.
"""

from __future__ import annotations

import re
from pathlib import Path

from hvdistill.storage import Location

# What `sharding/writer.py` produces: `<dataset>-<split>-u<unit>-<index>.tar` (units drawn from
# the whole split) or `<dataset>-<split>-<chunk>-p<part>-<index>.tar` (per-chunk units), with
# every component reduced to [A-Za-z0-9_-]; a writer's temporary ends in `.tmp` and never
# matches. Kept a little wider (any dotted components) so the rule is "a plain file name ending
# in .tar", never a URL, an option or a path.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.tar")


class ManifestError(ValueError):
    """A manifest (or data.shards entry) the reader refuses as a whole; names the entry."""


class UnsafeShardName(ManifestError):
    """A manifest entry that is not a plain shard file inside the shard directory."""


def check_shard_name(name: object, manifest: Path | str | Location = "manifest") -> str:
    """Return `name` if it is a plain shard file name; raise UnsafeShardName naming the entry."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise UnsafeShardName(
            f"{manifest}: shard entry {name!r} is not a shard file name (expected a plain "
            f"name like 'nuscenes-train-scene_0001-p000-0000.tar': no URL scheme, 'pipe:', "
            f"absolute path, '/' or '..'); the manifest is damaged or not from `hvdistill shard`"
        )
    return name


def resolve_shard_name(directory: Path | str, name: object, manifest: Path | str = "manifest") -> Path:
    """The path of shard `name` inside the local `directory`, refusing anything that could leave it."""
    directory = Path(directory)
    path = directory / check_shard_name(name, manifest)
    if path.resolve().parent != directory.resolve():
        raise UnsafeShardName(
            f"{manifest}: shard entry {name!r} resolves to {path.resolve()}, outside the shard "
            f"directory {directory.resolve()} (a symlink?); shards must be plain files beside "
            f"their manifest"
        )
    return path


def resolve_shard_location(directory: Location, name: object, manifest: Path | str = "manifest") -> Location:
    """Shard `name` inside `directory`, a local directory or an object-store prefix (same rule)."""
    if not directory.remote:
        return Location(resolve_shard_name(directory.local, name, manifest))
    return directory / check_shard_name(name, manifest)
