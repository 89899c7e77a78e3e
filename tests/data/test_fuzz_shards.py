"""Fuzzing the shard reader with real shards (what `hvdistill shard` writes), damaged 320 ways.

With a fixed seed, each case damages one shard in memory (truncation, byte flips inside every
member kind, damaged tar headers, npy shape/dtype headers, JPEG frame sizes, PNG IHDR sizes,
JSON fields), writes it beside an intact shard and streams both. The reader must never raise,
must yield exactly its planned number of samples (stand-ins for what it skipped), every yielded
sample must pass the range checks and survive augmentation + collate, and every skip must be
counted: decoded + bad + missing records = the records the manifest promised. A few cases, one
per kind of damage, are also served from the tests' S3 server: the reader must yield exactly
what it yields from local disk. The shards hold the nuScenes and the Argoverse 2 worlds' train
splits (written by `shard_in_process`, the conversion every Ray sharding task runs), so the
victims are shards of both datasets.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hvdistill.config import AugmentConfig, DataConfig, GeometryConfig, SourceConfig
from hvdistill.data.augment import augment_sample
from hvdistill.data.collate import collate
from hvdistill.data.sample_checks import DecodeLimits, check_sample
from hvdistill.data.shards import build_shard_dataset
from sharding.job import shard_in_process
from tests.data.shard_helpers import upload_dir

STORED = (96, 54)  # small stored images keep the shards tiny
CASES = 320
SEED = 20240611
MEMBER_KINDS = ("points.npy", "labels.npy", "pairs.npy", "calib.json", "meta.json", ".jpg", ".sp.png")
CFG = DataConfig(
    sources=[SourceConfig(name="nuscenes"), SourceConfig(name="argoverse2")],  # the shards' datasets
    resampled=False,
    shuffle_buffer=3,
    stored_image_width=STORED[0],
    stored_image_height=STORED[1],
)
GEO = GeometryConfig(crop_height=32, crop_width=64)  # small crops: augmentation in milliseconds


def build_shards(root: Path, av2_root: Path, out: Path) -> Path:
    """Shard the synthetic worlds' train splits with the function every Ray sharding task runs
    (`shard_in_process`: the same records and manifest; the CLI and Ray path has its own tests)."""
    sources = [
        SourceConfig(name="nuscenes", root=str(root), version="v1.0-trainval", split="train"),
        SourceConfig(name="argoverse2", root=str(av2_root), split="train"),
    ]
    # two nuScenes cameras (Argoverse 2: its seven) and ~2 samples per shard, cut per unit or by size
    cfg = replace(
        CFG,
        sources=sources,
        cameras=["CAM_FRONT", "CAM_BACK"],
        shard_task_samples=2,
        shard_size_mb=0.2,
    )
    shard_in_process(sources, cfg, out)
    return out


@pytest.fixture(scope="module")
def pristine(nuscenes_root, av2_root, tmp_path_factory) -> dict:
    out = build_shards(nuscenes_root, av2_root, tmp_path_factory.mktemp("shards"))
    manifest = json.loads((out / "manifest.json").read_text())
    shards = sorted(manifest["shards"], key=lambda s: s["samples"])
    assert len(shards) >= 2 and all(s["samples"] > 0 for s in shards)
    assert {s["dataset"] for s in shards[1:]} == {"nuscenes", "argoverse2"}  # victims of both
    return {"dir": out, "manifest": manifest, "shards": shards}


# ---- mutations: (tar bytes, members, rng) -> damaged tar bytes ----------------------------


def members_of(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def repack(data: bytes, replace: dict[str, bytes]) -> bytes:
    """The same tar with some members' payloads replaced (sizes follow)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for info in src.getmembers():
            payload = replace.get(info.name, src.extractfile(info).read())
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def pick(members, rng, suffix: str = "") -> tarfile.TarInfo:
    chosen = [m for m in members if m.name.endswith(suffix)] or members  # Argoverse 2: no labels.npy
    return chosen[rng.integers(len(chosen))]


def payload(data: bytes, m: tarfile.TarInfo) -> bytes:
    return data[m.offset_data : m.offset_data + m.size]


def in_place(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def truncate(data, members, rng):
    return data[: rng.integers(0, len(data))]


def flip_member(kind: str):
    def mutate(data, members, rng):
        m, out = pick(members, rng, kind), bytearray(data)
        for pos in rng.integers(m.offset_data, m.offset_data + m.size, rng.integers(1, 4)):
            out[pos] ^= int(rng.integers(1, 256))
        return bytes(out)

    return mutate


def flip_tar_header(data, members, rng):
    m, out = pick(members, rng), bytearray(data)
    out[m.offset + int(rng.integers(0, 512))] ^= int(rng.integers(1, 256))  # checksum now wrong
    return bytes(out)


def edit_tar_header(data, members, rng):
    """A header field changed and the checksum recomputed, so tarfile believes it."""
    m = pick(members, rng)
    header = bytearray(data[m.offset : m.offset + 512])
    field = rng.choice(["name", "size", "type"])
    if field == "name":
        pos = int(rng.integers(0, len(m.name)))
        header[pos] = ord(rng.choice(list("x./-_0"))) if rng.random() < 0.8 else 0
    elif field == "size":
        size = rng.choice([0, m.size // 2, m.size + 1, m.size + 700, len(data), 8**11 - 1])
        header[124:136] = b"%011o\0" % int(size)
    else:
        header[156] = ord(rng.choice(list("12567gx")))
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return in_place(data, m.offset, bytes(header))


def npy_header(data, members, rng):
    m = pick(members, rng, ".npy")
    raw = payload(data, m)
    buf = io.BytesIO(raw)
    np.lib.format.read_magic(buf)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    body = raw[buf.tell() :]
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
    change = rng.choice(["huge", "plus", "ndim", "dtype", "object", "fortran", "v2"])
    if change == "huge":
        header["shape"] = (10**12,) + tuple(shape[1:])
    elif change == "plus":
        header["shape"] = (shape[0] + int(rng.integers(1, 5)),) + tuple(shape[1:])
    elif change == "ndim":
        header["shape"] = tuple(shape) + (1,) if rng.random() < 0.5 else (int(np.prod(shape)),)
    elif change == "dtype":
        header["descr"] = rng.choice(["<f8", "<i4", ">f4", "|u1", "<f2"])
    elif change == "object":
        header["descr"] = "|O"
    elif change == "fortran":
        header["fortran_order"] = True
    out = io.BytesIO()
    (np.lib.format.write_array_header_2_0 if change == "v2" else np.lib.format.write_array_header_1_0)(
        out, header
    )
    return repack(data, {m.name: out.getvalue() + body})


def jpeg_sof(data, members, rng):
    m = pick(members, rng, ".jpg")
    sof = payload(data, m).index(b"\xff\xc0")
    width, height = rng.choice(
        [(0, 0), (65535, 65535), (STORED[0] + 1, STORED[1]), (STORED[0], 1), (4000, 3000)]
    )
    return in_place(data, m.offset_data + sof + 5, struct.pack(">HH", height, width))


def png_ihdr(data, members, rng):
    m = pick(members, rng, ".sp.png")
    raw = payload(data, m)
    width, height = rng.choice([(0, 1), (60000, 60000), (STORED[0], STORED[1] + 1), (1, 1), (2**31 - 1, 2)])
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) if rng.random() < 0.7 else raw[29:33]
    return in_place(data, m.offset_data + 16, ihdr + crc)


JSON_VALUES = [None, "x", -1, 0, 10**30, 1e308, float("nan"), [], {}, True, [[0.0] * 4] * 4, "a" * 300]


def json_field(data, members, rng):
    m = pick(members, rng, rng.choice(["calib.json", "meta.json"]))
    obj = json.loads(payload(data, m))
    parent, key = obj, None
    while True:  # walk to a random leaf or container
        keys = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
        if not keys:
            break
        key = keys[rng.integers(len(keys))]
        if not isinstance(parent[key], (dict, list)) or rng.random() < 0.3:
            break
        parent = parent[key]
    if key is None:
        return repack(data, {m.name: b"{}"})
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = JSON_VALUES[rng.integers(len(JSON_VALUES))]
    return repack(data, {m.name: json.dumps(obj).encode()})


MUTATIONS = (
    [(f"flip {k}", flip_member(k)) for k in MEMBER_KINDS] * 15  # 105
    + [("truncate", truncate)] * 30
    + [("flip tar header", flip_tar_header)] * 20
    + [("edit tar header", edit_tar_header)] * 40
    + [("npy header", npy_header)] * 35
    + [("jpeg SOF size", jpeg_sof)] * 30
    + [("png IHDR size", png_ihdr)] * 25
    + [("json field", json_field)] * 35
)


# ---- the test ------------------------------------------------------------------------------


def write_case(directory: Path, damaged: bytes, victim: dict, companion: dict, pristine_dir: Path) -> None:
    (directory / victim["name"]).write_bytes(damaged)
    if not (directory / companion["name"]).exists():
        (directory / companion["name"]).write_bytes((pristine_dir / companion["name"]).read_bytes())
    manifest = {"schema": 1, "shards": [victim, companion], "sources": [], "skipped": []}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def check_stream(ds, planned: int, keys: set[str], drive_model: bool, caplog) -> None:
    caplog.clear()
    got = list(ds)
    m = ds.metrics()
    assert len(got) == planned == len(ds)
    real = [s for s in got if not s.meta.get("padding")]
    assert len(real) == m["samples"]
    assert m["samples"] + m["bad_samples"] + m["missing_samples"] == planned, m
    assert m["repeated"] == m["bad_samples"] + m["missing_samples"], m
    bad_logs = [r for r in caplog.records if r.getMessage().startswith("skipping bad sample")]
    assert len(bad_logs) == m["bad_samples"]  # each skip logged once, with its key and member
    for s in got:
        assert s.key in keys
        check_sample(s, DecodeLimits(*STORED))
    if drive_model and real:
        rng = np.random.default_rng(0)
        batch = collate([augment_sample(s, AugmentConfig(), GEO, rng) for s in real[:2]], GEO)
        assert batch.batch_size == min(2, len(real))


def test_damaged_shards_never_crash_the_reader(pristine, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hvdistill.data.shards")
    rng = np.random.default_rng(SEED)
    companion, victims = pristine["shards"][0], pristine["shards"][1:]
    originals = {v["name"]: (pristine["dir"] / v["name"]).read_bytes() for v in victims}
    keys = {
        m.name.partition(".")[0]
        for s in pristine["shards"]
        for m in members_of((pristine["dir"] / s["name"]).read_bytes())
    }
    order = rng.permutation(len(MUTATIONS))
    assert len(order) >= 300
    outcomes = {}
    for case, index in enumerate(order[:CASES]):
        what, mutate = MUTATIONS[index]
        victim = victims[case % len(victims)]
        data = originals[victim["name"]]
        damaged = mutate(data, members_of(data), rng)
        directory = tmp_path / f"case{case % 2}"
        directory.mkdir(exist_ok=True)
        write_case(directory, damaged, victim, companion, pristine["dir"])
        ds = build_shard_dataset(CFG, rank=0, world_size=1, shards=[str(directory)])
        try:
            check_stream(ds, victim["samples"] + companion["samples"], keys, case % 8 == 0, caplog)
            if case % 10 == 0:  # the training mode too: a fixed number of valid samples
                resampled = replace(CFG, resampled=True, epoch_samples=4)
                got = list(build_shard_dataset(resampled, rank=0, world_size=1, shards=[str(directory)]))
                assert len(got) == 4 and all(s.key in keys for s in got)
        except Exception as e:  # name the case that broke, then fail with the original error
            raise AssertionError(f"case {case} ({what}) on {victim['name']}: {type(e).__name__}: {e}") from e
        outcomes[what] = outcomes.get(what, 0) + (
            ds.metrics()["samples"] < victim["samples"] + companion["samples"]
        )
    # the damage was real: most kinds of mutation made the reader skip something
    assert sum(outcomes.values()) > CASES // 3, outcomes


def test_damaged_shards_from_an_object_store_read_like_local_ones(pristine, tmp_path, s3_bucket):
    rng = np.random.default_rng(SEED + 1)
    companion, victims = pristine["shards"][0], pristine["shards"][1:]
    member_flips = {f"flip {kind}" for kind in MEMBER_KINDS[1:]}  # byte flips: points.npy's stand for all
    kinds = [k for k in dict.fromkeys(what for what, _ in MUTATIONS) if k not in member_flips]
    remote_cfg, damaged_cases = replace(CFG, read_ahead=1), 0
    for case, what in enumerate(kinds):
        mutate = dict(MUTATIONS)[what]
        victim = victims[case % len(victims)]
        data = (pristine["dir"] / victim["name"]).read_bytes()
        damaged = mutate(data, members_of(data), rng)
        directory = tmp_path / f"case{case}"
        directory.mkdir()
        # the manifest states the damaged size, as a writer would have: the same bytes either way
        write_case(directory, damaged, {**victim, "bytes": len(damaged)}, companion, pristine["dir"])
        prefix = upload_dir(directory, f"{s3_bucket}/case{case}")
        here = build_shard_dataset(CFG, rank=0, world_size=1, shards=[str(directory)])
        there = build_shard_dataset(remote_cfg, rank=0, world_size=1, shards=[prefix])
        got_here, got_there = list(here), list(there)
        assert [s.key for s in got_there] == [s.key for s in got_here], what
        assert there.metrics() == here.metrics(), what
        assert len(got_there) == victim["samples"] + companion["samples"], what
        damaged_cases += there.metrics()["samples"] < len(got_there)
    assert len(kinds) == 8 and damaged_cases >= len(kinds) // 2  # the damage was real
