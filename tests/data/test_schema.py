"""The shard sample schema: exact round trips, pickle-free decoding, sizes checked before any
allocation, range checks, and a SchemaError naming the member for every defect."""

import io
import json
import pickle
import struct
import zlib

import numpy as np
import pytest

from hvdistill.config import AugmentConfig, GeometryConfig
from hvdistill.data import schema
from hvdistill.data.augment import augment_sample
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.data.sample_checks import DecodeLimits
from hvdistill.geometry.transforms import make_transform, yaw_rotation

W, H = 80, 45


def make_prepared(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    cams = []
    yy, xx = np.mgrid[0:H, 0:W]
    smooth = np.stack([xx * 3, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # JPEG-friendly
    k = np.array([[60.0, 0.5, W / 2], [0.0, 61.0, H / 2], [0.0, 0.0, 1.0]])
    for i in range(2):
        sp = rng.integers(0, 150, (H, W)).astype(np.int16)
        sp[0, :3] = -1
        cams.append(
            CameraFrame(
                f"CAM_{i}",
                smooth + np.uint8(10 * i),
                k + np.diag([i, i, 0.0]),
                make_transform(yaw_rotation(0.3 * i), rng.normal(size=3)),
                make_transform(yaw_rotation(1.0 + i), rng.normal(size=3) * 100),
                timestamp=1_000_000 + i,
                token=f"t{i}",
                superpixels=sp,
            )
        )
    pairs = np.stack(
        [
            rng.integers(0, 500, 70),
            rng.integers(0, 2, 70),
            rng.uniform(-0.5, H - 0.51, 70),
            rng.uniform(-0.5, W - 0.51, 70),
            rng.uniform(1.0, 50.0, 70),
        ],
        1,
    ).astype(np.float32)
    return Sample(
        "0a1b2c",
        "nuscenes",
        rng.normal(size=(500, 4)).astype(np.float32),
        make_transform(yaw_rotation(0.1), [1.0, 0.0, 1.8]),
        make_transform(yaw_rotation(2.0), [300.0, 1000.0, 0.0]),
        cams,
        labels=rng.integers(0, 17, 500).astype(np.uint8),
        timestamp=999_999,
        pairs=pairs,
        meta={"scene": "scene-0001", "label_map": "nuscenes-lidarseg-16"},
    )


def record_of(sample: Sample | None = None) -> dict:
    return schema.encode_sample(sample or make_prepared(), jpeg_quality=90)


def test_round_trip_is_exact_except_jpeg():
    sample = make_prepared()
    record = record_of(sample)
    assert record["__key__"] == "0a1b2c"
    assert {
        "points.npy",
        "labels.npy",
        "pairs.npy",
        "calib.json",
        "meta.json",
        "cam0.jpg",
        "cam0.sp.png",
        "cam1.jpg",
        "cam1.sp.png",
    } == set(record) - {"__key__"}
    out = schema.decode_sample(record)
    for name in ("key", "dataset", "timestamp", "meta"):
        assert getattr(out, name) == getattr(sample, name)
    for name in ("points", "labels", "pairs", "lidar_to_ego", "ego_to_global"):
        a, b = getattr(out, name), getattr(sample, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert out.points.flags.writeable  # decoded arrays are the reader's own copies
    for a, b in zip(out.cameras, sample.cameras):
        assert (a.name, a.timestamp, a.token) == (b.name, b.timestamp, b.token)
        for name in ("intrinsics", "cam_to_ego", "ego_to_global", "superpixels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.superpixels.dtype == np.int16
        np.testing.assert_array_equal(a.image, schema.decode_jpeg(schema.encode_jpeg(b.image, 90)))
        assert np.abs(a.image.astype(int) - b.image).mean() < 3  # lossy, but the same picture


def test_superpixels_beyond_255_use_16_bits():
    ids = np.arange(600, dtype=np.int16).reshape(20, 30)
    ids[3, 3] = -1
    data = schema.encode_superpixels(ids)
    np.testing.assert_array_equal(schema.decode_superpixels(data), ids)
    small = np.zeros((4, 4), dtype=np.int16)
    assert schema.decode_superpixels(schema.encode_superpixels(small)).dtype == np.int16


def npy_with_header(header: dict, payload: bytes = b"", version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    write = (
        np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    )
    write(buf, header)
    return buf.getvalue() + payload


def test_pickled_arrays_are_refused():
    # an object-dtype .npy as an outside tool could write it: a header, then a pickle payload
    payload = pickle.dumps(np.array([{"evil": 1}], dtype=object)[0])
    record = record_of()
    record["points.npy"] = npy_with_header({"descr": "|O", "fortran_order": False, "shape": (1,)}, payload)
    with pytest.raises(schema.SchemaError, match="points.npy"):
        schema.decode_sample(record)


@pytest.mark.parametrize(
    "header, version",
    [
        ({"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}, (1, 0)),  # MemoryError before
        ({"descr": "<f4", "fortran_order": False, "shape": (2**40, 2**40)}, (2, 0)),
        ({"descr": "<f4", "fortran_order": True, "shape": (2, 4)}, (1, 0)),
        ({"descr": ">f4", "fortran_order": False, "shape": (2, 4)}, (1, 0)),
        ({"descr": "<f4", "fortran_order": False, "shape": (4, 2)}, (1, 0)),
        ({"descr": "<f4", "fortran_order": False, "shape": (8,)}, (1, 0)),
    ],
)
def test_npy_headers_are_checked_against_the_bytes_before_allocating(header, version):
    data = npy_with_header(header, np.zeros(8, np.float32).tobytes(), version)
    with pytest.raises(schema.SchemaError, match="points.npy"):
        schema.decode_npy(data, np.float32, 2, columns=4, member="points.npy")
    for cut in (0, 5, 9, 40):  # truncated magic / header
        with pytest.raises(schema.SchemaError):
            schema.decode_npy(data[:cut], np.float32, 2, columns=4)


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in the SOF0 header (what a flipped byte there does)."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def png_with_size(data: bytes, width: int, height: int, fix_crc: bool = True) -> bytes:
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) if fix_crc else data[29:33]
    return data[:16] + ihdr + crc + data[33:]


@pytest.mark.parametrize("size", [(60000, 60000), (W + 1, H), (W, 1), (0, H)])
def test_jpeg_size_is_checked_before_decoding(size):
    record = record_of()
    record["cam1.jpg"] = jpeg_with_size(record["cam1.jpg"], *size)
    with pytest.raises(schema.SchemaError, match="cam1.jpg"):
        schema.decode_sample(record)


@pytest.mark.parametrize("size, fix_crc", [((60000, 60000), True), ((W, H + 1), True), ((W, 2), False)])
def test_png_size_is_checked_before_decoding(size, fix_crc):
    record = record_of()
    record["cam0.sp.png"] = png_with_size(record["cam0.sp.png"], *size, fix_crc=fix_crc)
    with pytest.raises(schema.SchemaError, match="cam0.sp.png"):
        schema.decode_sample(record)


def test_limits_bound_calibrated_and_stored_sizes():
    record = record_of()
    schema.decode_sample(record, DecodeLimits(W, H))
    with pytest.raises(schema.SchemaError, match="outside 1..79"):
        schema.decode_sample(record, DecodeLimits(W - 1, H))


def edit_json(record: dict, member: str, edit) -> None:
    obj = json.loads(record[member])
    edit(obj)
    record[member] = json.dumps(obj).encode()


def set_pair(column: int, value: float):
    def damage(record):
        pairs = schema.decode_npy(record["pairs.npy"], np.float32, 2, columns=5)
        pairs[3, column] = value
        record["pairs.npy"] = schema.encode_npy(pairs)

    return damage


DAMAGE = {
    "missing_points": lambda r: r.pop("points.npy"),
    "missing_superpixels": lambda r: r.pop("cam1.sp.png"),
    "missing_pairs": lambda r: r.pop("pairs.npy"),
    "unknown_member": lambda r: r.update({"cam2.jpg": r["cam0.jpg"]}),
    "wrong_dtype": lambda r: r.update({"points.npy": schema.encode_npy(np.zeros((5, 4), np.float64))}),
    "nan_points": lambda r: r.update(
        {"points.npy": schema.encode_npy(np.full((500, 4), np.nan, np.float32))}
    ),
    "bad_jpeg": lambda r: r.update({"cam1.jpg": r["cam1.jpg"][:100]}),
    "png_as_jpeg": lambda r: r.update({"cam1.jpg": r["cam1.sp.png"]}),
    "bad_calib": lambda r: r.update({"calib.json": b'{"cameras": [{"name": 1}]'}),
    "calib_list": lambda r: r.update({"calib.json": b"[1, 2]"}),
    "deep_json": lambda r: r.update({"meta.json": b"[" * 100_000 + b"]" * 100_000}),
    "label_count": lambda r: r.update({"labels.npy": schema.encode_npy(np.zeros(3, np.uint8))}),
    "missing_image": lambda r: r.pop("cam0.jpg"),
    "pair_point_index": set_pair(0, 500),
    "pair_fractional_index": set_pair(0, 2.5),
    "pair_camera_index": set_pair(1, 2),
    "pair_row": set_pair(2, H - 0.5),
    "pair_column": set_pair(3, -0.6),
    "pair_depth": set_pair(4, 0.0),
    "pair_nan": set_pair(4, np.nan),
    "zero_focal": lambda r: edit_json(
        r, "calib.json", lambda c: c["cameras"][0]["intrinsics"][0].__setitem__(0, 0)
    ),
    "not_rigid": lambda r: edit_json(r, "calib.json", lambda c: c["lidar_to_ego"][0].__setitem__(0, 3.0)),
    "singular": lambda r: edit_json(
        r, "calib.json", lambda c: c["cameras"][1].__setitem__("cam_to_ego", [[0] * 4] * 4)
    ),
    "huge_width": lambda r: edit_json(r, "calib.json", lambda c: c["cameras"][0].__setitem__("width", 10**9)),
    "bool_width": lambda r: edit_json(r, "calib.json", lambda c: c["cameras"][0].__setitem__("width", True)),
    "float_timestamp": lambda r: edit_json(r, "meta.json", lambda m: m.__setitem__("timestamp", 1e400)),
    "few_tokens": lambda r: edit_json(r, "meta.json", lambda m: m.__setitem__("camera_tokens", ["a"])),
    "meta_not_dict": lambda r: edit_json(r, "meta.json", lambda m: m.__setitem__("meta", [1])),
    "key_mismatch": lambda r: edit_json(r, "meta.json", lambda m: m.__setitem__("key", "other")),
    "schema_version": lambda r: edit_json(r, "meta.json", lambda m: m.__setitem__("schema", 2)),
    "superpixel_id_too_big": lambda r: r.update(
        {"cam0.sp.png": schema.encode_superpixels(np.full((H, W), 4000, np.int16))}
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_records_raise_schema_error(damage):
    record = record_of()
    DAMAGE[damage](record)
    with pytest.raises(schema.SchemaError) as info:
        schema.decode_sample(record)
    member = str(info.value).split(":")[0].split(" ")[0]
    assert member in record or member in {"points.npy", "pairs.npy", "cam0.jpg", "cam1.sp.png"}, info.value


def test_decoded_samples_are_safe_for_augmentation():
    sample = schema.decode_sample(record_of())
    aug = augment_sample(
        sample, AugmentConfig(min_pairs_per_camera=1), GeometryConfig(), np.random.default_rng(0)
    )
    assert aug.images.shape[0] == 2


def test_keys_with_dots_are_refused():
    sample = make_prepared()
    sample.key = "08.000001"
    with pytest.raises(schema.SchemaError, match="no dots"):
        schema.encode_sample(sample, 90)
