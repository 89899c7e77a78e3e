"""Shard writing: deterministic bytes, size-bounded rollover, sha256 while writing, per-attempt temps,
and uploads to an object store (a real S3 endpoint) from a local scratch directory."""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

from hvdistill.storage import Location
from sharding.writer import SCRATCH_PREFIX, ShardWriter, balanced_quota, file_sha256, record_size


def records(n: int, payload: int = 3000) -> list[dict]:
    return [
        {"__key__": f"k{i:03d}", "points.npy": bytes([i]) * payload, "meta.json": b"{}"} for i in range(n)
    ]


def write(tmp_path, name, recs, max_bytes):
    w = ShardWriter(tmp_path, name, max_bytes)
    for r in recs:
        w.write(r)
    return w.commit()


def test_same_records_give_identical_shards(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", "x", records(5), 1 << 20)
    b = write(tmp_path / "b", "x", records(5), 1 << 20)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert a[0].sha256 == file_sha256(tmp_path / "a" / "x-0000.tar")  # hashed while written


def test_rollover_respects_max_bytes(tmp_path):
    recs = records(7)
    size = record_size(recs[0])
    shards = write(tmp_path, "x", recs, 3 * size)
    assert [s.samples for s in shards] == [3, 3, 1]
    assert [s.name for s in shards] == ["x-0000.tar", "x-0001.tar", "x-0002.tar"]
    for s in shards:
        assert s.bytes == (tmp_path / s.name).stat().st_size
    with tarfile.open(tmp_path / "x-0001.tar") as tar:
        names = tar.getnames()
    assert names == [
        "k003.meta.json",
        "k003.points.npy",
        "k004.meta.json",
        "k004.points.npy",
        "k005.meta.json",
        "k005.points.npy",
    ]  # samples contiguous, members sorted


def test_shards_stay_temporaries_of_their_attempt_until_commit(tmp_path):
    recs = records(4)
    a = ShardWriter(tmp_path, "x", 2 * record_size(recs[0]), attempt="aaaa")
    b = ShardWriter(tmp_path, "x", 2 * record_size(recs[0]), attempt="bbbb")
    for r in recs:
        a.write(r)
        b.write(r)
    a.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x-0000.tar.aaaa.tmp",
        "x-0000.tar.bbbb.tmp",
        "x-0001.tar.aaaa.tmp",
        "x-0001.tar.bbbb.tmp",
    ]
    b.abort()  # a failed attempt removes only its own files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-0000.tar.aaaa.tmp", "x-0001.tar.aaaa.tmp"]
    shards = a.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-0000.tar", "x-0001.tar"]
    for s in shards:
        assert (s.bytes, s.sha256) == ((tmp_path / s.name).stat().st_size, file_sha256(tmp_path / s.name))
        with tarfile.open(tmp_path / s.name) as tar:
            assert len(tar.getnames()) == 2 * s.samples


def test_aborted_open_shard_leaves_nothing(tmp_path):
    w = ShardWriter(tmp_path, "x", 1 << 20)
    w.write(records(1)[0])
    assert [p.name for p in tmp_path.iterdir()] == [f"x-0000.tar.{w.attempt}.tmp"]
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_unit_is_split_into_balanced_shards(tmp_path):
    recs = records(10)
    size = record_size(recs[0])
    w = ShardWriter(tmp_path, "x", 7 * size, samples=len(recs))  # 10 records: 2 shards needed
    for r in recs:
        w.write(r)
    assert [s.samples for s in w.commit()] == [5, 5]  # not 7 + 3
    assert balanced_quota(size, 10, 7 * size) == 5 and balanced_quota(size, 10, 100 * size) == 10
    assert balanced_quota(size, 0, size) > 10**9  # unknown unit size: the byte bound decides


def test_shards_to_an_object_store_are_uploaded_as_finished_and_leave_no_scratch(
    s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temporary directory, here
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = tmp_path / f"{SCRATCH_PREFIX}{int(gone.stdout)}-0a1b"  # a killed worker's scratch
    (dead / "x-0000.tar.0a1b.tmp").parent.mkdir()
    (dead / "x-0000.tar.0a1b.tmp").write_bytes(b"half a shard")
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-2c3d"  # a writer of a live process
    live.mkdir()
    recs, out = records(5), Location(f"{s3_bucket}/shards")
    writer = ShardWriter(out, "x", 2 * record_size(recs[0]))
    assert not dead.exists() and live.exists()
    for r in recs[:3]:
        writer.write(r)
    assert out.file_sizes() == {"x-0000.tar": writer.shards[0].bytes}  # uploaded once finished
    for r in recs[3:]:
        writer.write(r)
    shards = writer.commit()
    (tmp_path / "local").mkdir()
    assert [s.sha256 for s in write(tmp_path / "local", "x", recs, 2 * record_size(recs[0]))] == [
        s.sha256 for s in shards
    ]  # the same bytes as a local directory gets
    assert out.file_sizes() == {s.name: s.bytes for s in shards}  # no temporary object left
    for s in shards:
        assert hashlib.sha256((out / s.name).read_bytes()).hexdigest() == s.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["local", live.name])  # no scratch left
    failed = ShardWriter(Location(f"{s3_bucket}/failed"), "x", 2 * record_size(recs[0]))
    for r in recs[:3]:
        failed.write(r)
    failed.abort()  # the uploaded shard stays (an uncommitted unit is redone), the scratch goes
    assert list(Location(f"{s3_bucket}/failed").file_sizes()) == ["x-0000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["local", live.name])
