"""The shard sample schema: exact round trips, pickle-free decoding, clear errors."""

import io
import pickle

import numpy as np
import pytest

from hvdistill.data import schema
from hvdistill.data.sample import CameraFrame, Sample


def make_prepared(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    cams = []
    yy, xx = np.mgrid[0:45, 0:80]
    smooth = np.stack([xx * 3, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # JPEG-friendly
    for i in range(2):
        sp = rng.integers(0, 150, (45, 80)).astype(np.int16)
        sp[0, :3] = -1
        cams.append(
            CameraFrame(
                f"CAM_{i}",
                smooth + np.uint8(10 * i),
                rng.normal(size=(3, 3)),
                rng.normal(size=(4, 4)),
                rng.normal(size=(4, 4)),
                timestamp=1_000_000 + i,
                token=f"t{i}",
                superpixels=sp,
            )
        )
    return Sample(
        "0a1b2c",
        "nuscenes",
        rng.normal(size=(500, 4)).astype(np.float32),
        rng.normal(size=(4, 4)),
        rng.normal(size=(4, 4)),
        cams,
        labels=rng.integers(0, 17, 500).astype(np.uint8),
        timestamp=999_999,
        pairs=rng.normal(size=(70, 5)).astype(np.float32),
        meta={"scene": "scene-0001", "label_map": "nuscenes-lidarseg-16"},
    )


def test_round_trip_is_exact_except_jpeg():
    sample = make_prepared()
    record = schema.encode_sample(sample, jpeg_quality=90)
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


def test_pickled_arrays_are_refused():
    # an object-dtype .npy as an outside tool could write it: a header, then a pickle payload
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    buf.write(pickle.dumps(np.array([{"evil": 1}], dtype=object)[0]))
    record = schema.encode_sample(make_prepared(), 90)
    record["points.npy"] = buf.getvalue()
    with pytest.raises(schema.SchemaError):
        schema.decode_sample(record)


@pytest.mark.parametrize(
    "damage", ["missing_points", "wrong_dtype", "bad_jpeg", "bad_calib", "label_count", "missing_image"]
)
def test_damaged_records_raise_schema_error(damage):
    record = schema.encode_sample(make_prepared(), 90)
    if damage == "missing_points":
        del record["points.npy"]
    elif damage == "wrong_dtype":
        record["points.npy"] = schema.encode_npy(np.zeros((5, 4), np.float64))
    elif damage == "bad_jpeg":
        record["cam1.jpg"] = record["cam1.jpg"][:100]
    elif damage == "bad_calib":
        record["calib.json"] = b'{"cameras": [{"name": 1}]'
    elif damage == "label_count":
        record["labels.npy"] = schema.encode_npy(np.zeros(3, np.uint8))
    elif damage == "missing_image":
        del record["cam0.jpg"]
    with pytest.raises(schema.SchemaError):
        schema.decode_sample(record)


def test_keys_with_dots_are_refused():
    sample = make_prepared()
    sample.key = "08.000001"
    with pytest.raises(schema.SchemaError, match="no dots"):
        schema.encode_sample(sample, 90)
