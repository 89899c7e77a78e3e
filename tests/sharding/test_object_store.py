"""Sharding into an object store (a real S3 endpoint: moto on 127.0.0.1, tests/helpers/s3.py): the
layout, manifest and bytes of a local run, `verify` on the store, manifests escaping their prefix,
resuming an interrupted job, one job per prefix, and `--out` checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from hvdistill.storage import Location
from sharding.cli import main
from sharding.job import remove_temporaries
from sharding.lock import job_lock
from sharding.verify import main as verify_main

from .conftest import NUSCENES_VERSION, STORED, split_with_data

# per-scene units of at most 2 samples (4 units: 2, 1, 2, 1 samples), 2-sample units in 2 shards
SMALL = ["data.shard_shuffle=false", "data.shard_task_samples=2", "data.shard_size_mb=0.03"]


def write_config(path: Path, root: Path) -> Path:
    split = split_with_data("nuscenes", root)
    source = {"name": "nuscenes", "root": str(root), "version": NUSCENES_VERSION, "split": split}
    path.write_text(yaml.safe_dump({"data": {"sources": [source]}}))
    return path


def shard(out: str, config: Path, address: str) -> int:
    """`hvdistill shard --out OUT --config CONFIG` on the test cluster."""
    argv = ["--out", out, "--config", str(config), "--ray-address", address, "--no-progress"]
    return main([*argv, *STORED, *SMALL])


def objects(server, prefix: str) -> dict[str, bytes]:
    """{name relative to the prefix: bytes} of every object under `prefix` (directory markers
    that the S3 client may leave, keys ending in '/', are not objects of the dataset)."""
    where = Location(prefix)
    keys = [k for k in server.keys(where.bucket, f"{where.key}/") if not k.endswith("/")]
    return {k.removeprefix(f"{where.key}/"): Location(f"s3://{where.bucket}/{k}").read_bytes() for k in keys}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sharded(ray_address, s3_server, nuscenes_root, tmp_path_factory) -> tuple[str, Path, Path]:
    """The session world's nuScenes split sharded by the CLI (config-driven form) into a fresh S3
    prefix and into a local directory: (prefix, directory, config). Read only."""
    tmp = tmp_path_factory.mktemp("object-store")
    config = write_config(tmp / "shard.yaml", nuscenes_root)
    prefix, local = f"s3://{s3_server.new_bucket()}/shards", tmp / "local"
    assert shard(prefix, config, ray_address) == 0
    assert shard(str(local), config, ray_address) == 0
    return prefix, local, config


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_an_s3_prefix_holds_exactly_what_a_local_directory_holds_and_verifies(sharded, s3_server, capsys):
    prefix, local, _ = sharded
    stored, expected = objects(s3_server, prefix), files(local)
    del expected["_state/job.lock"]  # the local flock file stays; a released lease is deleted
    assert sorted(stored) == sorted(expected)  # same names: no temporary, no extra object
    for name, data in expected.items():  # manifest, source and done-records, every shard
        assert stored[name] == data, name
    manifest = json.loads(stored["manifest.json"])
    assert manifest["sources"][0]["complete"] and manifest["samples"] == 6
    assert len({s["unit"] for s in manifest["shards"]}) == 4 and len(manifest["shards"]) == 6
    for entry in manifest["shards"]:
        data = stored[entry["name"]]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    capsys.readouterr()
    assert verify_main([prefix, "--deep"]) == 0
    assert "OK, 6 samples in 6 shards, decoded" in capsys.readouterr().out


@pytest.mark.slow  # sharding through the CLI on Ray: seconds; `make test-all` runs it
def test_verify_refuses_manifest_entries_outside_the_prefix_without_opening_them(
    sharded, s3_server, tmp_path, monkeypatch, capsys, caplog
):
    prefix, _, _ = sharded
    store = Location(prefix)
    manifest = json.loads((store / "manifest.json").read_text())
    good = manifest["shards"][0]  # a sound shard, but outside the prefix verified below
    names = [
        f"../shards/{good['name']}",
        f"s3://{store.bucket}/shards/{good['name']}",
        f"/{store.bucket}/shards/{good['name']}",
        "pipe:touch SOMEFILE",
    ]
    escaping = store.parent / "escaping"
    (escaping / "manifest.json").write_text(
        json.dumps({**manifest, "shards": [{**good, "name": n} for n in names]})
    )
    monkeypatch.chdir(tmp_path)  # where `touch SOMEFILE` would land
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="werkzeug"):  # the S3 server's request log
        assert verify_main([str(escaping)]) == 1
    err = capsys.readouterr().err
    assert f"{len(names)} problem(s)" in err
    for name in names:
        assert f"shard entry {name!r} is not a shard file name" in err
    requests = [r.getMessage() for r in caplog.records]
    assert any("/escaping/manifest.json" in r for r in requests)  # the log does show reads
    assert not [r for r in requests if good["name"] in r], "an escaping entry was opened"
    assert not (tmp_path / "SOMEFILE").exists()


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_an_interrupted_s3_job_redoes_only_its_broken_units(sharded, s3_server, ray_address, capsys):
    prefix, _, config = sharded
    source, copy = Location(prefix), Location(prefix).parent / "resumed"
    client = s3_server.client()
    for name in objects(s3_server, prefix):
        client.copy_object(
            Bucket=source.bucket,
            Key=f"{copy.key}/{name}",
            CopySource={"Bucket": source.bucket, "Key": f"{source.key}/{name}"},
        )
    manifest = json.loads((copy / "manifest.json").read_text())
    shards = {}
    for entry in manifest["shards"]:
        shards.setdefault(entry["unit"], []).append(entry["name"])
    units = sorted(shards)
    (copy / "manifest.json").unlink()  # the job was interrupted before its end
    (copy / "_state" / "units" / f"{units[0]}.json").unlink()  # died before its commit
    (copy / shards[units[1]][0]).unlink()  # a shard missing
    (copy / shards[units[2]][0]).write_bytes(b"a shard of the wrong size")
    (copy / f"{units[3]}-0000.tar.0123456789ab.tmp").write_bytes(b"a dead attempt's shard")
    (copy / "_state" / "units" / f"{units[3]}.json.0123456789ab.tmp").write_bytes(b"{")
    capsys.readouterr()
    assert shard(str(copy), config, ray_address) == 0
    assert "(3 units converted, 1 already done)" in capsys.readouterr().out
    assert json.loads((copy / "manifest.json").read_text()) == manifest
    assert objects(s3_server, str(copy)) == objects(s3_server, prefix)  # no temporary left either


@pytest.mark.parametrize("where", ["local", "s3"])
def test_temporaries_of_dead_attempts_are_removed_but_not_the_leases(where, tmp_path, request):
    out = Location(tmp_path / "out" if where == "local" else f"{request.getfixturevalue('s3_bucket')}/out")
    dead = ["u-0000.tar.0123456789ab.tmp", ".manifest.json.x1y2.tmp", "_state/units/u.json.0a1b.tmp"]
    dead.append("_state/sources/nuscenes-train.json.0a1b.tmp")
    kept = ["u-0000.tar", "_state/units/u.json", "_state/job.lock.0a1b2c3d4e5f.tmp"]  # a lease renewal
    for name in dead + kept:
        (out / name).write_bytes(b"x")
    assert sorted(str(p) for p in remove_temporaries(out)) == sorted(str(out / n) for n in dead)
    assert [n for n in dead + kept if (out / n).exists()] == kept


def test_a_second_job_on_the_same_prefix_is_refused_naming_the_holder(
    ray_address, s3_server, s3_bucket, nuscenes_root, tmp_path, capsys
):
    prefix = f"{s3_bucket}/shards"
    config = write_config(tmp_path / "shard.yaml", nuscenes_root)
    with job_lock(prefix):  # what a running shard job holds: a lease object it renews
        assert shard(prefix, config, ray_address) == 2
        assert list(objects(s3_server, prefix)) == ["_state/job.lock"]  # nothing else written
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"being written by another shard job (pid {os.getpid()} on " in err and "lease" in err
    assert objects(s3_server, prefix) == {}  # released


@pytest.mark.parametrize(
    "out, fragment",
    [
        ("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/p", "credentials in a URI"),
        ("s3://bucket/p?endpoint_override=http://evil", "options in the URI"),
        ("ftp://host/p", "not a supported store"),
        ("pipe:cat", "looks like a command"),
        ("LOCAL_FILE", "is a file"),
        ("S3_OBJECT", "is a file"),
    ],
)
def test_an_unusable_out_is_one_line_and_exit_2(out, fragment, nuscenes_root, tmp_path, capsys, request):
    config = write_config(tmp_path / "shard.yaml", nuscenes_root)
    if out == "LOCAL_FILE":
        out = str(config)
    elif out == "S3_OBJECT":
        out = f"{request.getfixturevalue('s3_bucket')}/shards"
        Location(out).write_bytes(b"an object, not a prefix")
    assert main(["--out", out, "--config", str(config), "--no-progress"]) == 2  # before Ray starts
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "wJalrXUtnFEMI" not in err, err
    if fragment != "is a file":
        assert verify_main([out]) == 2 and fragment in capsys.readouterr().err
