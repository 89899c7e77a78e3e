"""Shard writing: deterministic bytes, size-bounded rollover, temporary names until complete."""

import tarfile

from sharding.writer import ShardWriter, file_sha256, record_size


def records(n: int, payload: int = 3000) -> list[dict]:
    return [
        {"__key__": f"k{i:03d}", "points.npy": bytes([i]) * payload, "meta.json": b"{}"} for i in range(n)
    ]


def write(tmp_path, name, recs, max_bytes):
    w = ShardWriter(tmp_path, name, max_bytes)
    for r in recs:
        w.write(r)
    return w.close()


def test_same_records_give_identical_shards(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", "x", records(5), 1 << 20)
    b = write(tmp_path / "b", "x", records(5), 1 << 20)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert a[0].sha256 == file_sha256(tmp_path / "a" / "x-0000.tar")


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


def test_unfinished_shard_keeps_temporary_name(tmp_path):
    w = ShardWriter(tmp_path, "x", 1 << 20)
    w.write(records(1)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["x-0000.tar.tmp"]
    w.abort()
    assert list(tmp_path.iterdir()) == []
