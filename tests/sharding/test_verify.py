"""`shard verify`: manifest entries are data (never commands or outside paths), checksums, counts
and keys on Ray, and decoding only with --deep."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from hvdistill.config import DataConfig, SourceConfig
from hvdistill.data.sources import build_source
from sharding.job import run_sharding
from sharding.verify import main as verify_main
from sharding.verify import verify_directory
from sharding.writer import file_sha256

from .conftest import NUSCENES_VERSION, split_with_data

CFG = DataConfig(stored_image_width=96, stored_image_height=54, shard_task_samples=2)


@pytest.fixture(scope="module")
def sharded(ray_address, nuscenes_root, tmp_path_factory) -> Path:
    """A shard directory written by the job (read only: tests copy it)."""
    split = split_with_data("nuscenes", nuscenes_root)
    scene = tmp_path_factory.mktemp("split") / "scenes.txt"

    cfg = SourceConfig(name="nuscenes", root=str(nuscenes_root), version=NUSCENES_VERSION, split=split)
    scene.write_text(build_source(cfg).chunks()[0] + "\n")  # one scene: 3 samples in 2 units
    out = tmp_path_factory.mktemp("sharded")
    run_sharding(dataclasses.replace(cfg, split_file=str(scene)), CFG, out, progress=False)
    return out


def copy_of(sharded: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sharded, tmp_path / "shards"))


def edit_manifest(out: Path, edit) -> None:
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "name",
    ["pipe:touch SOMEFILE", "/ABSOLUTE/outside.tar", "../outside.tar", "link.tar", "http://host/x.tar"],
)
def test_hostile_manifest_entries_are_refused_and_never_opened(sharded, tmp_path, monkeypatch, capsys, name):
    out = copy_of(sharded, tmp_path)
    good = json.loads((out / "manifest.json").read_text())["shards"][0]
    outside = tmp_path / "outside.tar"
    shutil.copy(out / good["name"], outside)  # a sound shard, but outside the directory
    (out / "link.tar").symlink_to(outside)
    name = name.replace("/ABSOLUTE", str(tmp_path))
    edit_manifest(out, lambda m: m["shards"].append({**good, "name": name}))
    monkeypatch.chdir(tmp_path)  # where `touch SOMEFILE` would land
    assert verify_main([str(out)]) == 1
    err = capsys.readouterr().err
    assert f"shard entry {name!r} " in err and "1 problem(s)" in err
    assert not (tmp_path / "SOMEFILE").exists() and not (out / "SOMEFILE").exists()


def rewrite_member(path: Path, suffix: str, change) -> None:
    """Rewrite a shard with the first member ending in `suffix` changed."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    done = False
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if not done and info.name.endswith(suffix):
                data, done = change(data), True
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_images_are_decoded_only_with_deep(sharded, tmp_path, capsys):
    out = copy_of(sharded, tmp_path)
    entry = json.loads((out / "manifest.json").read_text())["shards"][0]
    shard = out / entry["name"]
    rewrite_member(shard, ".cam3.jpg", lambda data: data[: len(data) // 3])  # a truncated JPEG

    def rehash(m):
        for s in m["shards"]:
            if s["name"] == entry["name"]:
                s["bytes"], s["sha256"] = shard.stat().st_size, file_sha256(shard)

    edit_manifest(out, rehash)  # checksums match: only decoding finds the damage
    assert verify_directory(out) == []
    problems = verify_directory(out, deep=True)
    assert len(problems) == 1 and entry["name"] in problems[0] and "cam3.jpg" in problems[0]
    assert verify_main([str(out), "--deep"]) == 1 and verify_main([str(out)]) == 0
    assert "add --deep to decode" in capsys.readouterr().out


def test_checksums_counts_and_duplicate_keys(sharded, tmp_path):
    out = copy_of(sharded, tmp_path)
    assert verify_directory(out) == []
    first, second = json.loads((out / "manifest.json").read_text())["shards"][:2]
    data = bytearray((out / first["name"]).read_bytes())
    data[700] ^= 0xFF
    (out / first["name"]).write_bytes(bytes(data))
    shutil.copy(out / second["name"], out / "dup-0000.tar")  # the same keys a second time

    def edit(m):
        m["shards"][1]["samples"] += 1
        m["shards"].append({**second, "name": "dup-0000.tar"})

    edit_manifest(out, edit)
    (out / "x-0000.tar.0123abcd.tmp").write_bytes(b"")
    problems = "\n".join(verify_directory(out))
    assert f"{first['name']}: sha256 differs" in problems
    assert f"{second['name']}: {second['samples']} samples, manifest says {second['samples'] + 1}" in problems
    assert "appears 2 times" in problems and "leftover temporary" in problems
