"""hvdistill/storage.py on local disk and on a real S3 endpoint (moto on 127.0.0.1): one API, same results."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvdistill.storage import Location, StorageError, absolute, is_uri, join, location_problem


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> Location:
    """The same tests on a local directory and on an S3 prefix."""
    if request.param == "local":
        return Location(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return Location(f"{bucket}/some/prefix")


def test_write_read_list_delete_alike_on_both(root, tmp_path):
    assert not root.exists() and root.iterdir() == []
    (root / "a.json").write_text('{"x": 1}')
    (root / "sub" / "b.bin").write_bytes(b"\0" * 10)
    assert (root / "a.json").read_text() == '{"x": 1}'
    assert (root / "a.json").is_file() and not (root / "a.json").is_dir()
    assert (root / "sub").is_dir() and root.is_dir() and root.exists()
    assert (root / "sub" / "b.bin").size() == 10
    assert [c.name for c in root.iterdir()] == ["a.json", "sub"]
    assert not any(c.name.endswith(".tmp") for c in root.iterdir())  # the temporaries are gone
    with (root / "sub" / "b.bin").open_read() as f:
        f.seek(4)
        assert f.read(3) == b"\0\0\0"
    local = (root / "a.json").download(tmp_path / "down" / "a.json")
    assert local.read_text() == '{"x": 1}'
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    (root / "big.bin").upload(source)
    assert (root / "big.bin").read_bytes() == source.read_bytes()
    (root / "a.json").unlink()
    (root / "a.json").unlink()  # missing: nothing to do
    assert not (root / "a.json").exists()
    root.rmtree()
    assert not root.exists()


def test_file_sizes_list_the_files_of_one_directory_alike_on_both(root):
    assert root.file_sizes() == {}  # absent
    (root / "b.tar").write_bytes(b"x" * 7)
    (root / "a.json").write_bytes(b"")
    (root / "sub" / "c.bin").write_bytes(b"yy")
    assert root.file_sizes() == {"a.json": 0, "b.tar": 7}  # files only, sorted, with their sizes
    assert list(root.file_sizes()) == ["a.json", "b.tar"]
    assert (root / "sub").file_sizes() == {"c.bin": 2}


def test_a_read_larger_than_its_limit_is_refused(root):
    (root / "m.json").write_bytes(b"x" * 100)
    assert (root / "m.json").read_bytes(limit=100) == b"x" * 100
    with pytest.raises(StorageError, match="more than the 99"):
        (root / "m.json").read_bytes(limit=99)


def test_names_join_and_parent(root):
    child = root / "x" / "y.tar"
    assert child.name == "y.tar" and child.parent.parent == root
    assert str(root.joinpath("x", "y.tar")) == str(child) == join(str(root), "x/y.tar")
    for bad in ("..", "", "a/../b", "."):
        with pytest.raises(StorageError):
            root / bad


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("pipe:cat /etc/passwd", "looks like a command"),
        ("http://example.com/x", "not a supported store"),
        ("file:///etc", "not a supported store"),
        ("s3://KEY:SECRET@bucket/p", "credentials in a URI"),
        ("s3://bucket/p?endpoint_override=evil", "options in the URI"),
        ("s3://Bad_Bucket!/p", "not a bucket name"),
        ("s3://bucket/a/../b", "'..' are not allowed"),
    ],
)
def test_locations_that_are_refused_say_why(text, fragment):
    assert fragment in location_problem(text, "data.shards")
    with pytest.raises(StorageError, match="."):
        Location(text)


def test_plain_paths_and_good_uris_pass():
    for ok in ("/data/shards", "rel/dir", "s3://my-bucket/prefix", "gs://bucket.name/a/b", ""):
        assert location_problem(ok, "k") is None
    assert is_uri("s3://b/p") and not is_uri("/x") and not is_uri(Path("/x"))
    assert absolute("s3://b/p", Path("/base")) == "s3://b/p"
    assert absolute("rel", Path("/base")) == "/base/rel"
    assert str(Location("s3://bkt//a///b/")) == "s3://bkt/a/b"


@pytest.mark.slow  # pyarrow retries the dead endpoint for ~6 s
def test_an_unreachable_store_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as err:
        (Location("s3://no-such-endpoint-bucket/p") / "x").read_bytes()
    assert "no-such-endpoint-bucket" in str(err.value) and "\n" not in str(err.value)
