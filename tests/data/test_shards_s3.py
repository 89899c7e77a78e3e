"""Streaming shards from an object store (the tests' real S3 server): the same samples in the same
order as from local disk (both modes, read-ahead 0 and 2, a mid-epoch resume, forked DataLoader
workers), one GET per shard, the same trust rules for manifests, damaged objects counted not
fatal, read-ahead threads that end with their iterator, and the training entry points
(`has_split`, `manifest_hash`) on remote entries."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import replace

import pytest
from torch.utils.data import DataLoader

from hvdistill.config import DataConfig
from hvdistill.data.shard_fetch import THREAD_NAME
from hvdistill.data.shard_index import ManifestError
from hvdistill.data.shards import build_shard_dataset
from hvdistill.storage import Location
from hvdistill.train.data import has_split, manifest_hash
from tests.data.shard_helpers import assert_same, upload_dir, write_dataset

RESAMPLED = DataConfig(resampled=True, epoch_samples=14, shuffle_buffer=5)
ONCE = DataConfig(resampled=False, shuffle_buffer=5)
BATCH = 2


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return f"s3://{s3_server.new_bucket()}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, bucket) -> tuple[str, str]:
    """(local shard dir, the same files under s3://<bucket>/shards): 17 samples in 6 shards."""
    out = tmp_path_factory.mktemp("shards")
    write_dataset(out, "nuscenes", 17, per_shard=3)
    return str(out), upload_dir(out, f"{bucket}/shards")


def stream(cfg: DataConfig, where: str, epoch: int = 0, start: int = 0, **kw):
    ds = build_shard_dataset(cfg, rank=0, world_size=1, batch_size=BATCH, shards=[where], **kw)
    ds.set_epoch(epoch, start_batch=start)
    return ds


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def wait_for_no_fetch_threads(seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while fetch_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not fetch_threads(), "read-ahead threads outlived their iterator"


@pytest.mark.parametrize("read_ahead", [0, 2])
@pytest.mark.parametrize("cfg", [RESAMPLED, ONCE], ids=["resampled", "once"])
def test_remote_shards_give_the_local_samples_in_the_local_order(shards, cfg, read_ahead):
    local, remote = shards
    cfg = replace(cfg, read_ahead=read_ahead)
    for epoch, start in ((0, 0), (1, 3)):  # a fresh epoch, then a resume after 3 batches
        here, there = stream(cfg, local, epoch, start), stream(cfg, remote, epoch, start)
        got_here, got_there = list(here), list(there)
        assert len(got_here) == len(here) - start * BATCH and len(got_there) == len(got_here)
        assert [s.key for s in got_there] == [s.key for s in got_here]
        for a, b in zip(got_here, got_there):
            assert_same(a, b)
        assert there.metrics() == here.metrics() and here.metrics()["bad_shards"] == 0
    wait_for_no_fetch_threads()


def test_forked_dataloader_workers_read_remote_shards(shards):
    local, remote = shards
    cfg = replace(ONCE, read_ahead=2)
    keys = {}
    for where in (local, f"{remote}/manifest.json"):
        ds = stream(cfg, where, epoch=2)
        keys[where] = [s.key for s in DataLoader(ds, batch_size=None, num_workers=2)]
    assert keys[f"{remote}/manifest.json"] == keys[local] and len(keys[local]) == 17


def test_each_remote_shard_is_one_get_of_the_whole_object(shards, bucket, s3_server):
    _, remote = shards
    path = f"/{Location(remote).bucket}/shards/"
    before = len(s3_server.requests("GET", path))
    assert len(list(stream(replace(ONCE, read_ahead=2), remote))) == 17
    gets = s3_server.requests("GET", path)[before:]
    tars = sorted(p for p in gets if p.endswith(".tar"))
    assert len(tars) == len(set(tars)) == 6, gets  # not one ranged request per record or header
    assert all(p.endswith((".tar", "manifest.json")) for p in gets)


@pytest.mark.parametrize(
    "name",
    ["../x.tar", "pipe:cat x.tar", "/etc/passwd", "s3://other-bucket/x.tar", "sub/x.tar", "..", "x.tar\n"],
)
def test_remote_manifests_follow_the_local_trust_rules(shards, bucket, name, s3_server):
    local, _ = shards
    manifest = json.loads(Location(f"{local}/manifest.json").read_bytes())
    manifest["shards"][0]["name"] = name
    prefix = f"{bucket}/tampered-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    Location(f"{prefix}/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"shards\[0\].*is not a shard file name"):
        build_shard_dataset(ONCE, rank=0, world_size=1, shards=[prefix])
    gets = s3_server.requests("GET", f"/{Location(prefix).bucket}/{Location(prefix).key}/")
    assert gets and all(p.endswith("/manifest.json") for p in gets)  # nothing it names was requested


def damaged_copy(local: str, prefix: str) -> dict[str, int]:
    """The 6 shards under `prefix` with shard 0 larger than its manifest says, shard 1 truncated,
    shard 2 garbage of the promised size and shard 3 missing; returns the manifest's sample counts."""
    manifest = json.loads(Location(f"{local}/manifest.json").read_bytes())
    entries = sorted(manifest["shards"], key=lambda s: s["name"])
    for i, entry in enumerate(entries):
        data = Location(f"{local}/{entry['name']}").read_bytes()
        data = [data + bytes(1024), data[:1500], b"\x17" * entry["bytes"], None, data, data][i]
        if data is not None:
            Location(f"{prefix}/{entry['name']}").write_bytes(data)
    Location(f"{prefix}/manifest.json").write_text(json.dumps(manifest))
    return {e["name"]: e["samples"] for e in entries}


def test_damaged_remote_shards_are_counted_not_fatal(shards, bucket, caplog):
    caplog.set_level(logging.WARNING, logger="hvdistill.data.shards")
    prefix = f"{bucket}/damaged"
    samples = damaged_copy(shards[0], prefix)
    ds = stream(replace(ONCE, read_ahead=2), prefix)
    got = list(ds)
    assert len(got) == 17 and sum(samples.values()) == 17
    # shard 0 refused unread (3 missing); shard 1: first record cut (bad), 2 missing; shard 2
    # unreadable (3 missing); shard 3 absent (3 missing); shards 4 and 5: 5 good samples
    assert ds.metrics() == {
        "samples": 5,
        "bad_samples": 1,
        "bad_shards": 4,
        "missing_samples": 11,
        "repeated": 12,
    }
    too_large = [r.getMessage() for r in caplog.records if "more than the" in r.getMessage()]
    assert len(too_large) == 1 and "c000-p000-0000.tar" in too_large[0] and "fix the manifest" in too_large[0]
    resampled = stream(replace(RESAMPLED, read_ahead=2), prefix)
    assert len(list(resampled)) == 14 and resampled.metrics()["bad_shards"] > 0


def test_a_missing_remote_manifest_is_one_clear_error(bucket):
    for entry in (f"{bucket}/nothing-here", f"{bucket}/nothing-here/manifest.json"):
        with pytest.raises(
            FileNotFoundError, match=r"nothing-here/manifest.json: no manifest; run `hvdistill"
        ):
            build_shard_dataset(ONCE, rank=0, world_size=1, shards=[entry])
    with pytest.raises(ManifestError, match="nor one on s3://"):
        build_shard_dataset(ONCE, rank=0, world_size=1, shards=[f"{bucket}/nothing-here.tar"])


def test_bare_remote_tars_read_like_local_ones_within_their_bound(shards):
    local, remote = shards
    names = ["nuscenes-train-c000-p000-0000.tar", "nuscenes-train-c005-p000-0000.tar"]
    keys = {}
    for where in (local, remote):
        ds = build_shard_dataset(ONCE, rank=0, world_size=1, shards=[f"{where}/{n}" for n in names])
        keys[where] = [s.key for s in ds]
    assert keys[remote] == keys[local] and len(keys[local]) == 5
    small = replace(ONCE, shard_size_mb=0.001)  # 2 kB allowed: the tars hold more
    with pytest.raises(ManifestError, match=r"c000-p000-0000.tar.*raise data.shard_size_mb=0.001"):
        build_shard_dataset(small, rank=0, world_size=1, shards=[f"{remote}/{names[0]}"])


def test_abandoned_iterators_stop_their_read_ahead(shards, s3_server):
    _, remote = shards
    cfg = replace(RESAMPLED, epoch_samples=10_000, read_ahead=2)
    path = f"/{Location(remote).bucket}/shards/"
    with s3_server.slowed(0.1):  # fetches take long enough to be in flight when abandoned
        it = iter(stream(cfg, remote))
        next(it)
        in_flight = len(fetch_threads())
        assert in_flight, "read-ahead fetches should be running"
        before = len(s3_server.requests("", path))
        it.close()
        wait_for_no_fetch_threads()
    after = len(s3_server.requests("", path))
    assert after - before <= 2 * in_flight  # at most the HEAD + GET of a fetch already running
    time.sleep(0.3)
    assert len(s3_server.requests("", path)) == after  # and nothing started after the close


def test_has_split_and_manifest_hash_read_remote_entries(shards, bucket):
    local, remote = shards
    data = DataConfig(shards=[remote])
    assert has_split(data, "train") and not has_split(data, "val")
    manifest = Location(f"{remote}/manifest.json").read_bytes()
    assert manifest_hash(data) == hashlib.sha256(remote.encode() + b"\0" + manifest).hexdigest()
    bare = f"{remote}/nuscenes-train-c000-p000-0000.tar"
    size = Location(bare).size()
    expected = hashlib.sha256(bare.encode() + b"\0" + f"nuscenes-train-c000-p000-0000.tar:{size}".encode())
    assert manifest_hash(DataConfig(shards=[bare])) == expected.hexdigest()
    # the same manifest bytes give the same hash part locally (only the entry text differs)
    assert (
        manifest_hash(DataConfig(shards=[local]))
        == hashlib.sha256(local.encode() + b"\0" + manifest).hexdigest()
    )
