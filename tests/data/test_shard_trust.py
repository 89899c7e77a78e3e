"""Manifests are data, not commands: names that could run or reach anything are refused whole."""

import json
import os
from pathlib import Path

import pytest

from hvdistill.config import DataConfig
from hvdistill.data.shard_index import ManifestError
from hvdistill.data.shard_names import UnsafeShardName
from hvdistill.data.shards import build_shard_dataset
from tests.data.shard_helpers import write_dataset

CFG = DataConfig(resampled=False)


def tamper(directory: Path, name: str) -> None:
    """Replace the first shard's name in the manifest (what an attacker or a bad merge does)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"][0]["name"] = name
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("relative", [True, False])
def test_a_pipe_name_runs_nothing_and_fails_clearly(tmp_path, monkeypatch, relative):
    data = tmp_path / "shards"
    write_dataset(data, "nuscenes", 4, per_shard=2)
    evil = tmp_path / "SOMEFILE"
    tamper(data, f"pipe:touch {evil}; cat nuscenes-train-c001-p000-0000.tar")
    monkeypatch.chdir(tmp_path)  # the reproduced hole: manifest.json given as a relative path
    manifest = "shards/manifest.json" if relative else str(data / "manifest.json")
    with pytest.raises(UnsafeShardName, match=r"shards\[0\].*'pipe:touch"):
        build_shard_dataset(CFG, rank=0, world_size=1, shards=[manifest])
    assert not evil.exists()


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../outside.tar",
        "sub/../../outside.tar",
        "http://example.com/a.tar",
        "file:///etc/passwd",
        "-rf.tar",
        "a.tar\n",
        "",
        7,
        None,
    ],
)
def test_names_outside_the_directory_are_refused(tmp_path, name):
    write_dataset(tmp_path, "nuscenes", 2, per_shard=2)
    tamper(tmp_path, name)
    with pytest.raises(UnsafeShardName, match=r"shards\[0\]"):
        build_shard_dataset(CFG, rank=0, world_size=1, shards=[str(tmp_path)])


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    data = tmp_path / "shards"
    write_dataset(data, "nuscenes", 2, per_shard=2)
    (tmp_path / "secret.tar").write_bytes(b"x" * 1024)
    os.symlink(tmp_path / "secret.tar", data / "link-0000.tar")
    tamper(data, "link-0000.tar")
    with pytest.raises(UnsafeShardName, match="outside the shard directory"):
        build_shard_dataset(CFG, rank=0, world_size=1, shards=[str(data)])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["shards"][0].update(samples="2"), "'samples' must be a int"),
        (lambda m: m["shards"][0].update(samples=-1), "negative"),
        (lambda m: m["shards"][0].update(dataset="../x"), "not a dataset name"),
        (lambda m: m["shards"].__setitem__(0, "a.tar"), "expected an object"),
        (lambda m: m.__setitem__("shards", {"a": 1}), "no 'shards' list"),
    ],
)
def test_malformed_entries_refuse_the_manifest(tmp_path, edit, match):
    write_dataset(tmp_path, "nuscenes", 2, per_shard=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    edit(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=match):
        build_shard_dataset(CFG, rank=0, world_size=1, shards=[str(tmp_path)])


def test_bare_tar_paths_must_be_local_files(tmp_path, monkeypatch):
    write_dataset(tmp_path, "nuscenes", 3, per_shard=3)
    monkeypatch.chdir(tmp_path)
    tar = "nuscenes-train-c000-p000-0000.tar"
    assert (
        len(list(build_shard_dataset(CFG, rank=0, world_size=1, shards=[tar]))) == 3
    )  # relative, local: fine
    for entry in (f"pipe:touch {tmp_path / 'SOMEFILE'}", "https://example.com/a.tar", "missing.tar"):
        with pytest.raises(ManifestError, match="local .tar file"):
            build_shard_dataset(CFG, rank=0, world_size=1, shards=[entry])
    assert not (tmp_path / "SOMEFILE").exists()
