"""Indexing shard tars from their headers: grouping, structural defects, truncation, and that the
tars stay plain WebDataset tars."""

import io
import tarfile

import pytest
import webdataset as wds

from hvdistill.data import schema
from hvdistill.data.shard_tar import ShardError, read_record, scan_shard
from tests.data.shard_helpers import make_prepared, write_records


def tar_of(members: list[tuple[str, bytes]], path, kind: bytes = tarfile.REGTYPE) -> str:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind if name.endswith(".odd") else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_records_are_indexed_from_headers_and_read_exactly(tmp_path):
    records = [schema.encode_sample(make_prepared(f"k{i}", "nuscenes", i), 90) for i in range(3)]
    (info,) = write_records(tmp_path, "nuscenes-train-a-p000", records)
    refs = list(scan_shard(str(tmp_path / info.name)))
    assert [r.key for r in refs] == ["k0", "k1", "k2"] and [r.index for r in refs] == [0, 1, 2]
    assert not any(r.problem for r in refs)
    for ref, record in zip(refs, records):
        got = read_record(ref)
        assert {k: v for k, v in got.items() if not k.startswith("__")} == {
            k: v for k, v in record.items() if not k.startswith("__")
        }
    # still a plain WebDataset tar: webdataset's own reader sees the same records
    seen = [s["__key__"] for s in wds.WebDataset(str(tmp_path / info.name), shardshuffle=False)]
    assert seen == ["k0", "k1", "k2"]


def test_structural_defects_mark_the_record(tmp_path):
    members = [
        ("a.points.npy", b"1"),
        ("a.meta.json", b"2"),
        ("b.points.npy", b"3"),
        ("a.calib.json", b"4"),  # key a again: its members were split apart
        ("c.points.npy", b"5"),
        ("c.points.npy", b"6"),  # the same member twice
        ("noextension", b"7"),
        ("d/e.points.npy", b"8"),
        ("f.link.odd", b""),  # not a regular file
    ]
    path = tar_of(members, tmp_path / "t.tar", kind=tarfile.SYMTYPE)
    refs = list(scan_shard(path))
    assert [(r.key, bool(r.problem)) for r in refs] == [
        ("a", False),
        ("b", False),
        ("a", True),
        ("c", True),
        ("noextension", True),
        ("d/e", True),
        ("f", True),
    ]
    assert "second time" in refs[2].problem and "twice" in refs[3].problem and "regular" in refs[6].problem


@pytest.mark.parametrize("cut", [0, 100, 512, 700, 1024, 1536, 2048 + 512])
def test_truncated_tars_raise_after_the_records_before_the_cut(tmp_path, cut):
    full = tar_of([("a.x", b"1" * 600), ("b.x", b"2" * 10)], tmp_path / "full.tar")
    data = open(full, "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    got = []
    with pytest.raises(ShardError, match="truncated|unreadable|invalid"):
        for ref in scan_shard(str(tmp_path / "cut.tar")):
            got.append((ref.key, ref.problem))
    assert len(got) <= 2 and all(key in "ab" for key, _ in got)


def test_an_invalid_header_mid_file_is_an_error_not_a_silent_end(tmp_path):
    full = tar_of([("a.x", b"1"), ("b.x", b"2"), ("c.x", b"3")], tmp_path / "full.tar")
    data = bytearray(open(full, "rb").read())
    data[1024 + 100] ^= 0xFF  # the second header's mode field: its checksum no longer matches
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    got = []
    with pytest.raises(ShardError, match="invalid tar header at byte 1024"):
        for ref in scan_shard(str(tmp_path / "bad.tar")):
            got.append(ref.key)
    assert got == ["a"]


def test_missing_files_raise_shard_error(tmp_path):
    with pytest.raises(ShardError, match="cannot open"):
        list(scan_shard(str(tmp_path / "none.tar")))
