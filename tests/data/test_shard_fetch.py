"""Fetching object-store shards whole (hvdistill/data/shard_fetch.py) on the tests' S3 server: the
size bound holds before any payload is requested, read-ahead keeps exactly N shards fetching
ahead of the one being read, 0 fetches in the reading thread, and local shards pass through."""

from __future__ import annotations

import threading
import time

import pytest

from hvdistill.config import DataConfig
from hvdistill.data.shard_fetch import THREAD_NAME, bare_tar_limit, fetch_limit, fetch_whole, prefetched
from hvdistill.data.shard_tar import ShardError
from hvdistill.storage import Location

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def objects(s3_server) -> list[str]:
    """Six small objects s3://<bucket>/o<i>.tar holding bytes([i]) * (100 + i)."""
    bucket = f"s3://{s3_server.new_bucket()}"
    uris = [f"{bucket}/o{i}.tar" for i in range(6)]
    for i, uri in enumerate(uris):
        Location(uri).write_bytes(bytes([i]) * (100 + i))
    return uris


def requested(server, uri: str, method: str = "GET") -> int:
    location = Location(uri)
    return sum(p == f"/{location.bucket}/{location.key}" for p in server.requests(method))


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_an_object_is_fetched_whole_and_bounded_before_its_payload(objects, s3_server):
    assert fetch_whole(objects[3], LIMIT, "fix") == bytes([3]) * 103
    gets = requested(s3_server, objects[2])
    with pytest.raises(ShardError, match=r"o2.tar: 102 bytes, more than the 101 allowed \(re-shard"):
        fetch_whole(objects[2], 101, "re-shard")
    assert requested(s3_server, objects[2]) == gets  # refused from its size alone: no GET
    with pytest.raises(ShardError, match="cannot be fetched"):
        fetch_whole(objects[0].replace("o0", "absent"), LIMIT, "fix")
    assert fetch_limit(0, DataConfig(shard_size_mb=1.5)) == (
        bare_tar_limit(DataConfig(shard_size_mb=1.5)),
        ("no size in a manifest: raise data.shard_size_mb=1.5"),
    )
    assert bare_tar_limit(DataConfig(shard_size_mb=1.5)) == 3 << 20


def test_read_ahead_keeps_the_next_shards_fetching_in_order(objects, s3_server):
    plan = [*objects[:2], "/local/shard.tar", *objects[2:]]  # a local entry passes through
    before = {uri: requested(s3_server, uri) for uri in objects}

    def fresh(uri: str) -> int:
        return requested(s3_server, uri) - before[uri]

    items = prefetched(plan, lambda uri: (uri, LIMIT, "fix"), ahead=2)
    first, fetch = next(items)  # reading item 0: items 1 and 2 (local, nothing to fetch) are ahead
    assert first == objects[0] and fetch.result() == bytes([0]) * 100
    assert wait_until(lambda: fresh(objects[1]) == 1)
    time.sleep(0.2)
    assert fresh(objects[2]) == 0  # item 3 is not fetched while item 0 is read
    second, fetch = next(items)  # reading item 1: item 3 starts
    assert second == objects[1] and wait_until(lambda: fresh(objects[2]) == 1)
    assert fresh(objects[3]) == 0
    got = [(first, None), (second, fetch.result)]
    for item, fetch in items:
        got.append((item, fetch.result if fetch else None))
    assert [item for item, _ in got] == plan
    assert got[1][1]() == bytes([1]) * 101 and got[2][1] is None
    assert all(r() == bytes([i]) * (100 + i) for i, (_, r) in enumerate(got[3:], 2))
    assert all(fresh(uri) == 1 for uri in objects)  # each fetched once


def test_read_ahead_zero_fetches_in_the_reading_thread(objects, s3_server):
    items = prefetched(objects[:2], lambda uri: (uri, LIMIT, "fix"), ahead=0)
    for i, (uri, fetch) in enumerate(items):
        gets = requested(s3_server, uri)
        time.sleep(0.1)
        assert requested(s3_server, uri) == gets  # nothing fetched before it is asked for
        assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
        assert uri == objects[i] and fetch.result() == bytes([i]) * (100 + i)
        assert requested(s3_server, uri) == gets + 1


def test_closing_cancels_what_was_fetched_ahead(objects, s3_server):
    before = {uri: requested(s3_server, uri) for uri in objects}
    items = prefetched(objects, lambda uri: (uri, LIMIT, "fix"), ahead=3)
    _, fetch = next(items)
    fetch.result()
    items.close()
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == THREAD_NAME])
    time.sleep(0.1)
    assert requested(s3_server, objects[0]) - before[objects[0]] == 1
    assert all(requested(s3_server, uri) - before[uri] <= 1 for uri in objects[1:4])  # at most once
    heads = {uri: requested(s3_server, uri, "HEAD") for uri in objects[4:]}
    assert all(requested(s3_server, uri) == before[uri] for uri in objects[4:])  # never started
    time.sleep(0.1)
    assert heads == {uri: requested(s3_server, uri, "HEAD") for uri in objects[4:]}
