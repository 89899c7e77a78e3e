"""Images are checked from their header before decoding: a file declaring 20000 x 10000 pixels (a
decompression bomb) is one bad sample, quarantined like any other damage, never a process-wide error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hvdistill.data.errors import SampleReadError
from hvdistill.data.sources.files import DEFAULT_MAX_PIXELS, read_image
from tests.data.sources.test_damage import assert_quarantined, first_two_keys, kitti_files, kitti_source


def declared_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height RGB pixels (its data is one empty chunk): what a
    decompression bomb looks like to a reader that opens it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((20000, 10000), "refused before decoding"),
        ((4000, 3000), "4000x3000 = 12000000 pixels, more than the 5760000"),
    ],
)
def test_a_huge_declared_image_is_a_sample_error_before_decoding(tmp_path, size, reason):
    path = declared_png(tmp_path / "bomb.png", *size)
    with pytest.raises(SampleReadError) as err:
        read_image("key-1", path)
    assert err.value.key == "key-1" and err.value.path == str(path) and reason in err.value.reason


def test_the_limit_is_the_callers_and_the_expected_size_is_checked_from_the_header(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    assert read_image("k", path).shape == (30, 40, 3) and 40 * 30 < DEFAULT_MAX_PIXELS
    with pytest.raises(SampleReadError, match="more than the 1000 allowed"):
        read_image("k", path, max_pixels=1000)
    with pytest.raises(SampleReadError, match="image is 40x30 but the dataset records 1600x900"):
        read_image("k", declared_png(tmp_path / "other.png", 40, 30), expected_size=(1600, 900))


def test_a_bomb_among_a_datasets_images_quarantines_only_its_sample(kitti_copy):
    src = kitti_source(kitti_copy)
    key, other = first_two_keys(src)
    _, image, _, _ = kitti_files(src, key)
    declared_png(image, 20000, 10000)
    assert_quarantined(src, key, other, image, "refused before decoding")
