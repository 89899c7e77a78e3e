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

Decoding never unpickles: npy with allow_pickle=False, JSON, JPEG and PNG via Pillow.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from hvdistill.data.sample import CameraFrame, Sample

SCHEMA_VERSION = 1
POINTS = "points.npy"
LABELS = "labels.npy"
CALIB = "calib.json"
PAIRS = "pairs.npy"
META = "meta.json"
_CAMERA_MEMBER = re.compile(r"^cam(\d+)\.(jpg|sp\.png)$")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits names at the first dot


class SchemaError(ValueError):
    """A shard member is missing, malformed, or has the wrong dtype/shape."""


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
# Decoding


def decode_npy(data: bytes, dtype: np.dtype, ndim: int, columns: int | None = None) -> np.ndarray:
    """npy bytes -> array of exactly `dtype` and `ndim` (and `columns`); never unpickles."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SchemaError(f"unreadable npy: {e}") from e
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise SchemaError(f"expected {np.dtype(dtype)} with {ndim} dims, got {array.dtype} {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise SchemaError(f"expected {columns} columns, got shape {array.shape}")
    return array


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except OSError as e:
        raise SchemaError(f"undecodable JPEG: {e}") from e


def decode_superpixels(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) int16 superpixel ids, -1 where the stored value is the maximum."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            stored = np.asarray(im)
    except OSError as e:
        raise SchemaError(f"undecodable superpixel PNG: {e}") from e
    none_value = np.iinfo(np.uint8).max if stored.dtype == np.uint8 else np.iinfo(np.uint16).max
    ids = stored.astype(np.int16)  # (H, W)
    ids[stored == none_value] = -1
    return ids


def _json(record: dict[str, Any], member: str) -> dict[str, Any]:
    try:
        return json.loads(record[member])
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"{member}: {type(e).__name__}: {e}") from e


def _array(values: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged or non-numeric lists
        raise SchemaError(f"{what}: not a numeric {shape} array ({e})") from e
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise SchemaError(f"{what}: expected finite {shape}, got {array.shape}")
    return array


def _camera(record: dict[str, Any], i: int, calib: dict[str, Any], meta: dict[str, Any]) -> CameraFrame:
    if image_member(i) not in record:
        raise SchemaError(f"missing {image_member(i)}")
    image = decode_jpeg(record[image_member(i)])
    size = (int(calib["width"]), int(calib["height"]))
    if (image.shape[1], image.shape[0]) != size:
        raise SchemaError(f"{image_member(i)}: size {image.shape[1::-1]} != calib {size}")
    superpixels = None
    if superpixel_member(i) in record:
        superpixels = decode_superpixels(record[superpixel_member(i)])
        if superpixels.shape != image.shape[:2]:
            raise SchemaError(f"{superpixel_member(i)}: shape {superpixels.shape} != image")
    return CameraFrame(
        name=calib["name"],
        image=image,
        intrinsics=_array(calib["intrinsics"], (3, 3), f"cam{i} intrinsics"),
        cam_to_ego=_array(calib["cam_to_ego"], (4, 4), f"cam{i} cam_to_ego"),
        ego_to_global=_array(calib["ego_to_global"], (4, 4), f"cam{i} ego_to_global"),
        timestamp=int(meta["camera_timestamps"][i]),
        token=str(meta["camera_tokens"][i]),
        superpixels=superpixels,
    )


def decode_sample(record: dict[str, Any]) -> Sample:
    """WebDataset record (member -> bytes) -> Sample; raises SchemaError on any defect."""
    for member in (POINTS, CALIB, META):
        if member not in record:
            raise SchemaError(f"missing {member}")
    calib, meta = _json(record, CALIB), _json(record, META)
    try:
        cameras = [_camera(record, i, c, meta) for i, c in enumerate(calib["cameras"])]
        lidar_to_ego = _array(calib["lidar_to_ego"], (4, 4), "lidar_to_ego")
        ego_to_global = _array(calib["ego_to_global"], (4, 4), "ego_to_global")
        key, dataset, timestamp = str(meta["key"]), str(meta["dataset"]), int(meta["timestamp"])
        if not isinstance(meta.get("meta", {}), dict):
            raise TypeError("meta.json 'meta' must be an object")
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise SchemaError(f"malformed calib/meta: {type(e).__name__}: {e}") from e
    if record.get("__key__", key) != key:
        raise SchemaError(f"tar key {record['__key__']!r} differs from meta.json key {key!r}")
    points = decode_npy(record[POINTS], np.float32, 2, columns=4)
    labels = decode_npy(record[LABELS], np.uint8, 1) if LABELS in record else None
    if labels is not None and len(labels) != len(points):
        raise SchemaError(f"{len(labels)} labels for {len(points)} points")
    pairs = decode_npy(record[PAIRS], np.float32, 2, columns=5) if PAIRS in record else None
    return Sample(
        key=key,
        dataset=dataset,
        points=points,
        lidar_to_ego=lidar_to_ego,
        ego_to_global=ego_to_global,
        cameras=cameras,
        labels=labels,
        timestamp=timestamp,
        pairs=pairs,
        meta=meta.get("meta", {}),
    )


def camera_members(record: dict[str, Any]) -> list[int]:
    """Sorted camera indices present in a record (for verification tools)."""
    found = {int(m.group(1)) for name in record if (m := _CAMERA_MEMBER.match(name))}
    return sorted(found)
