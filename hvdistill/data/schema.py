"""The on-disk sample schema of hvdistill shards: keys, encodings and decoding, in one place.

`sharding/` writes samples with `encode_sample` and `hvdistill/data/shards.py` reads them with
`decode_sample`; nothing else knows the layout. Every member of a WebDataset sample is named
`<key>.<member>` inside the tar (the contract is documented in docs/data-format.md):

    points.npy      (N, 4) float32 x, y, z, intensity, LiDAR frame   (np.save, no pickle)
    labels.npy      (N,) uint8 training classes                       (optional)
    cam{i}.jpg      camera i image at the stored resolution           (JPEG, RGB)
    cam{i}.sp.png   camera i SLIC superpixel ids on the stored image  (PNG, 8-bit when every
                    id fits, else 16-bit; pixels without a superpixel hold the maximum value)
    calib.json      per camera K (stored image), camera->ego, ego pose at the camera time,
                    image size; lidar->ego and the ego pose at the LiDAR time
    pairs.npy       (M, 5) float32 point index, camera index, row v, column u, depth (m)
    meta.json       dataset, key, timestamps, tokens, camera names, the source's meta dict

Decoding never unpickles and never trusts a size it has not checked: npy headers are parsed
first and must match the member's byte length (no pickle, no Fortran order, exact dtype);
JPEG/PNG sizes are read from the image header and checked against calib.json and
`DecodeLimits` before Pillow decodes anything; any exception Pillow or numpy's header parser
raises on these outside bytes becomes a `SchemaError` naming the member. `decode_sample` then
range-checks the whole sample (hvdistill/data/sample_checks.py).
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np
from PIL import Image

from hvdistill.config import DataConfig
from hvdistill.data.sample import CameraFrame, Sample
from hvdistill.data.sample_checks import DecodeLimits, SchemaError, check_sample

SCHEMA_VERSION = 1
POINTS = "points.npy"
LABELS = "labels.npy"
CALIB = "calib.json"
PAIRS = "pairs.npy"
META = "meta.json"
_CAMERA_MEMBER = re.compile(r"^cam(\d+)\.(jpg|sp\.png)$")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits names at the first dot


def image_member(cam: int) -> str:
    return f"cam{cam}.jpg"


def superpixel_member(cam: int) -> str:
    return f"cam{cam}.sp.png"


# --------------------------------------------------------------------------------------------
# Encoding


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (deterministic for the same input and quality)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB").save(
        buf, format="JPEG", quality=int(quality)
    )
    return buf.getvalue()


def encode_superpixels(ids: np.ndarray) -> bytes:
    """(H, W) int superpixel ids (-1 = none) -> 8- or 16-bit grey PNG; -1 stored as the max."""
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) > np.iinfo(np.int16).max:  # decoded as int16 (Sample)
        raise SchemaError(
            f"superpixel id {int(ids.max())} exceeds {np.iinfo(np.int16).max}; "
            f"lower data.superpixels.n_segments"
        )
    narrow = not ids.size or int(ids.max()) < np.iinfo(np.uint8).max
    dtype = np.uint8 if narrow else np.uint16
    stored = np.where(ids < 0, np.iinfo(dtype).max, ids).astype(dtype)
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG")
    return buf.getvalue()


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _matrix(m: np.ndarray) -> list[list[float]]:
    return np.asarray(m, dtype=np.float64).tolist()


def calibration_record(sample: Sample) -> dict[str, Any]:
    """The calib.json content of a sample (float64 values survive JSON exactly)."""
    cameras = [
        {
            "name": c.name,
            "intrinsics": _matrix(c.intrinsics),
            "cam_to_ego": _matrix(c.cam_to_ego),
            "ego_to_global": _matrix(c.ego_to_global),
            "width": c.size[0],
            "height": c.size[1],
        }
        for c in sample.cameras
    ]
    return {
        "lidar_to_ego": _matrix(sample.lidar_to_ego),
        "ego_to_global": _matrix(sample.ego_to_global),
        "cameras": cameras,
    }


def meta_record(sample: Sample) -> dict[str, Any]:
    """The meta.json content: identity, timestamps, tokens and the source's own meta dict."""
    return {
        "schema": SCHEMA_VERSION,
        "key": sample.key,
        "dataset": sample.dataset,
        "timestamp": int(sample.timestamp),
        "camera_names": [c.name for c in sample.cameras],
        "camera_tokens": [c.token for c in sample.cameras],
        "camera_timestamps": [int(c.timestamp) for c in sample.cameras],
        "meta": sample.meta,
    }


def encode_sample(sample: Sample, jpeg_quality: int) -> dict[str, Any]:
    """A prepared Sample -> WebDataset record {"__key__": key, member: bytes}."""
    if not _KEY.match(sample.key):
        raise SchemaError(f"sample key {sample.key!r} must match {_KEY.pattern} (no dots)")
    record: dict[str, Any] = {"__key__": sample.key}
    record[POINTS] = encode_npy(np.asarray(sample.points, dtype=np.float32))
    if sample.labels is not None:
        record[LABELS] = encode_npy(np.asarray(sample.labels, dtype=np.uint8))
    if sample.pairs is not None:
        record[PAIRS] = encode_npy(np.asarray(sample.pairs, dtype=np.float32))
    for i, cam in enumerate(sample.cameras):
        record[image_member(i)] = encode_jpeg(cam.image, jpeg_quality)
        if cam.superpixels is not None:
            record[superpixel_member(i)] = encode_superpixels(cam.superpixels)
    record[CALIB] = encode_json(calibration_record(sample))
    record[META] = encode_json(meta_record(sample))
    return record


# --------------------------------------------------------------------------------------------
# Decoding: every size is checked against the member's byte length or DecodeLimits before
# anything is allocated; every defect is a SchemaError naming the member.

DEFAULT_LIMITS = DecodeLimits.from_config(DataConfig())
_MAX_TIMESTAMP = 2**63  # timestamps are int64 microseconds


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(buf)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(buf)
    raise ValueError(f"npy format version {version} is not one this schema writes")


def decode_npy(
    data: bytes, dtype: np.dtype, ndim: int, columns: int | None = None, member: str = "npy"
) -> np.ndarray:
    """npy bytes -> array of exactly `dtype` and `ndim` (and `columns`); never unpickles.

    The header is parsed first and its shape times the item size must equal the bytes that
    follow it, so a header claiming a huge shape is refused before any allocation."""
    buf = io.BytesIO(data)
    try:
        shape, fortran_order, stored = _npy_header(buf)
    except Exception as e:  # noqa: BLE001 - numpy's header parser on outside bytes: any error = bad member
        raise SchemaError(f"{member}: unreadable npy header: {type(e).__name__}: {e}") from e
    if stored != np.dtype(dtype) or fortran_order or len(shape) != ndim or min(shape, default=0) < 0:
        raise SchemaError(
            f"{member}: expected C-order {np.dtype(dtype)} with {ndim} dims, got "
            f"{stored} {shape}{' (Fortran order)' if fortran_order else ''}"
        )
    if columns is not None and shape[1] != columns:
        raise SchemaError(f"{member}: expected {columns} columns, got shape {shape}")
    count, offset = math.prod(shape), buf.tell()
    if count * np.dtype(dtype).itemsize != len(data) - offset:
        raise SchemaError(
            f"{member}: header shape {shape} needs {count * np.dtype(dtype).itemsize} bytes, "
            f"the member holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


def _decode_image(
    data: bytes,
    fmt: str,
    modes: tuple[str, ...],
    member: str,
    size: tuple[int, int] | None,
    limits: DecodeLimits,
) -> np.ndarray:
    """Open (header only), check the size against `size` / `limits`, then decode."""
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            limits.check_size(*im.size, member)
            if size is not None and im.size != tuple(size):
                raise SchemaError(f"{member}: size {im.size} differs from calib.json's {tuple(size)}")
            if im.mode not in modes:
                raise SchemaError(f"{member}: mode {im.mode} is not one of {modes}")
            im.load()
            return np.asarray(im)
    except SchemaError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow on outside bytes raises many types (incl. DecompressionBombError)
        raise SchemaError(f"{member}: undecodable {fmt}: {type(e).__name__}: {e}") from e


def decode_jpeg(
    data: bytes,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    member: str = "jpg",
) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB; `size` = expected (width, height), checked before decoding."""
    return _decode_image(data, "JPEG", ("RGB",), member, size, limits)


def decode_superpixels(
    data: bytes,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    member: str = "sp.png",
) -> np.ndarray:
    """PNG bytes -> (H, W) int16 superpixel ids, -1 where the stored value is the maximum."""
    stored = _decode_image(data, "PNG", ("L", "I;16"), member, size, limits)
    none_value = np.iinfo(stored.dtype).max
    if stored.size and int(stored[stored != none_value].max(initial=0)) > np.iinfo(np.int16).max:
        raise SchemaError(f"{member}: superpixel id above {np.iinfo(np.int16).max}")
    ids = stored.astype(np.int16)  # (H, W)
    ids[stored == none_value] = -1
    return ids


def _json(record: dict[str, Any], member: str) -> dict[str, Any]:
    if member not in record:
        raise SchemaError(f"{member}: missing")
    try:
        value = json.loads(record[member])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SchemaError(f"{member}: {type(e).__name__}: {e}") from e
    if not isinstance(value, dict):
        raise SchemaError(f"{member}: expected a JSON object, got {type(value).__name__}")
    return value


def _field(obj: Any, name: str, kind: type, member: str) -> Any:
    """obj[name] if it is a `kind` (bool never counts as int); else a SchemaError."""
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(f"{member}: field {name!r} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _int_list(obj: dict[str, Any], name: str, n: int, member: str) -> list[int]:
    values = _field(obj, name, list, member)
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise SchemaError(f"{member}: {name!r} must list {n} integers")
    if not all(0 <= v < _MAX_TIMESTAMP for v in values):
        raise SchemaError(f"{member}: {name!r} holds a value outside [0, 2**63)")
    return values


def _json_matrix(obj: Any, name: str, shape: tuple[int, ...], member: str) -> np.ndarray:
    values = _field(obj, name, list, member)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:  # ragged or non-numeric lists
        raise SchemaError(f"{member}: {name!r} is not a numeric {shape} array ({e})") from e
    if array.shape != shape:
        raise SchemaError(f"{member}: {name!r} expected shape {shape}, got {array.shape}")
    return array


def _check_members(record: dict[str, Any], n_cam: int) -> None:
    """Every required member present and no member this schema does not write."""
    cams = {image_member(i) for i in range(n_cam)} | {superpixel_member(i) for i in range(n_cam)}
    required = {POINTS, PAIRS, CALIB, META} | cams
    present = {m for m in record if not m.startswith("__")}
    if required - present:
        raise SchemaError(f"{sorted(required - present)[0]}: missing")
    if present - required - {LABELS}:
        raise SchemaError(f"{sorted(present - required - {LABELS})[0]}: not a member of this schema")


def _camera(
    record: dict[str, Any], i: int, calib: Any, meta: dict[str, Any], limits: DecodeLimits
) -> CameraFrame:
    where = f"{CALIB} cameras[{i}]"
    width, height = _field(calib, "width", int, where), _field(calib, "height", int, where)
    limits.check_size(width, height, where)  # before decoding anything of this camera
    intrinsics = _json_matrix(calib, "intrinsics", (3, 3), where)
    cam_to_ego = _json_matrix(calib, "cam_to_ego", (4, 4), where)
    ego_to_global = _json_matrix(calib, "ego_to_global", (4, 4), where)
    image = decode_jpeg(record[image_member(i)], (width, height), limits, image_member(i))
    sp = decode_superpixels(record[superpixel_member(i)], (width, height), limits, superpixel_member(i))
    return CameraFrame(
        name=_field(calib, "name", str, where),
        image=image,
        intrinsics=intrinsics,
        cam_to_ego=cam_to_ego,
        ego_to_global=ego_to_global,
        timestamp=meta["camera_timestamps"][i],
        token=meta["camera_tokens"][i],
        superpixels=sp,
    )


def _identity(meta: dict[str, Any], n_cam: int) -> dict[str, Any]:
    """meta.json checked: schema, key, dataset, timestamps, tokens, the source's meta dict."""
    if meta.get("schema") != SCHEMA_VERSION:
        raise SchemaError(f"{META}: schema {meta.get('schema')!r:.20} is not {SCHEMA_VERSION}")
    key = _field(meta, "key", str, META)
    if not _KEY.match(key):
        raise SchemaError(f"{META}: key {key!r:.80} must match {_KEY.pattern}")
    _field(meta, "dataset", str, META)
    if not 0 <= _field(meta, "timestamp", int, META) < _MAX_TIMESTAMP:
        raise SchemaError(f"{META}: 'timestamp' is outside [0, 2**63)")
    _int_list(meta, "camera_timestamps", n_cam, META)
    tokens = _field(meta, "camera_tokens", list, META)
    if len(tokens) != n_cam or not all(isinstance(t, str) for t in tokens):
        raise SchemaError(f"{META}: 'camera_tokens' must list {n_cam} strings")
    _field(meta, "meta", dict, META)
    return meta


def decode_sample(record: dict[str, Any], limits: DecodeLimits | None = None) -> Sample:
    """WebDataset record (member -> bytes) -> Sample; raises SchemaError on any defect.

    Decodes only with the decoders above, checks every size before allocating, and finally
    range-checks the whole sample (hvdistill/data/sample_checks.py), so what it returns is safe
    for augmentation and collate. `limits` bounds image sizes (default: DataConfig's stored
    size)."""
    limits = limits or DEFAULT_LIMITS
    calib, meta = _json(record, CALIB), _json(record, META)
    cams = _field(calib, "cameras", list, CALIB)
    _check_members(record, len(cams))
    meta = _identity(meta, len(cams))
    if record.get("__key__", meta["key"]) != meta["key"]:
        raise SchemaError(f"{META}: key {meta['key']!r} differs from the tar key {record['__key__']!r}")
    lidar_to_ego = _json_matrix(calib, "lidar_to_ego", (4, 4), CALIB)
    ego_to_global = _json_matrix(calib, "ego_to_global", (4, 4), CALIB)
    points = decode_npy(record[POINTS], np.float32, 2, columns=4, member=POINTS)
    labels = decode_npy(record[LABELS], np.uint8, 1, member=LABELS) if LABELS in record else None
    pairs = decode_npy(record[PAIRS], np.float32, 2, columns=5, member=PAIRS)
    sample = Sample(
        key=meta["key"],
        dataset=meta["dataset"],
        points=points,
        lidar_to_ego=lidar_to_ego,
        ego_to_global=ego_to_global,
        cameras=[_camera(record, i, c, meta, limits) for i, c in enumerate(cams)],
        labels=labels,
        timestamp=meta["timestamp"],
        pairs=pairs,
        meta=meta["meta"],
    )
    check_sample(sample, limits)
    return sample


def camera_members(record: dict[str, Any]) -> list[int]:
    """Sorted camera indices present in a record (for verification tools)."""
    found = {int(m.group(1)) for name in record if (m := _CAMERA_MEMBER.match(name))}
    return sorted(found)
