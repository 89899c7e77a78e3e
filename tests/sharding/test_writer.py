"""Shard writing: deterministic bytes, size-bounded rollover, sha256 while writing, per-attempt temps."""

import tarfile

from sharding.writer import ShardWriter, balanced_quota, file_sha256, record_size


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
