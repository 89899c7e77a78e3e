"""Small shards for reader tests: valid prepared samples written with sharding's writer, and their
upload to an object store (the tests' S3 server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hvdistill.data import schema
from hvdistill.data.sample import CameraFrame, Sample
from sharding.writer import ShardWriter

W, H = 40, 30


def make_prepared(key: str, dataset: str, seed: int) -> Sample:
    """A tiny valid prepared sample (one 40x30 camera, 50 points, 7 in-image pairs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 5, yy * 7, (xx + yy + seed) % 256], -1).astype(np.uint8)
    k = np.array([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]])
    cam = CameraFrame(
        "CAM_FRONT",
        image,
        k,
        np.eye(4),
        np.eye(4),
        seed,
        f"c{seed}",
        superpixels=(xx // 10 + 4 * (yy // 10)).astype(np.int16),
    )
    pairs = np.stack(
        [
            rng.integers(0, 50, 7),
            np.zeros(7),
            rng.uniform(0, H - 1, 7),
            rng.uniform(0, W - 1, 7),
            rng.uniform(1, 9, 7),
        ],
        1,
    ).astype(np.float32)
    return Sample(
        key,
        dataset,
        rng.normal(size=(50, 4)).astype(np.float32),
        np.eye(4),
        np.eye(4),
        [cam],
        labels=rng.integers(0, 5, 50).astype(np.uint8),
        timestamp=seed,
        pairs=pairs,
        meta={"i": seed},
    )


def write_records(out: Path, prefix: str, records: list[dict]) -> list:
    """Records into `<prefix>-NNNN.tar` with sharding's writer; returns its ShardInfos."""
    writer = ShardWriter(out, prefix, max_bytes=1 << 30)
    for record in records:
        writer.write(record)
    return getattr(writer, "commit", writer.close)()  # commit() renames temporaries into place


def write_shards(
    out: Path, dataset: str, sizes: list[int], split: str = "train", first: int = 0
) -> tuple[list[Sample], list[dict]]:
    """Shards of the given sizes (samples each) in `out`; returns (samples, manifest shard entries)."""
    out.mkdir(parents=True, exist_ok=True)
    samples, shards, i = [], [], first
    for n, size in enumerate(sizes):
        new = [make_prepared(f"{dataset}_{j:03d}", dataset, j) for j in range(i, i + size)]
        infos = write_records(
            out, f"{dataset}-{split}-c{first + n:03d}-p000", [schema.encode_sample(s, 90) for s in new]
        )
        shards += [{**s.to_dict(), "dataset": dataset, "split": split} for s in infos]
        samples, i = samples + new, i + size
    return samples, shards


def write_manifest(out: Path, shards: list[dict], sources: list[dict] | None = None) -> Path:
    manifest = {"schema": schema.SCHEMA_VERSION, "shards": shards, "sources": sources or [], "skipped": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "manifest.json"


def write_dataset(out: Path, dataset: str, n: int, per_shard: int) -> list[Sample]:
    """n samples in shards of `per_shard` samples, plus a manifest.json like sharding's."""
    sizes = [min(per_shard, n - start) for start in range(0, n, per_shard)]
    samples, shards = write_shards(out, dataset, sizes)
    write_manifest(out, shards)
    return samples


def reference(sample: Sample) -> Sample:
    return schema.decode_sample(schema.encode_sample(sample, 90))


def assert_same(a: Sample, b: Sample) -> None:
    assert (a.key, a.dataset, a.timestamp, a.meta) == (b.key, b.dataset, b.timestamp, b.meta)
    for name in ("points", "labels", "pairs", "lidar_to_ego", "ego_to_global"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for ca, cb in zip(a.cameras, b.cameras):
        for name in ("image", "superpixels", "intrinsics", "cam_to_ego", "ego_to_global"):
            np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name))


def upload_dir(local: Path, prefix: str) -> str:
    """Every file of the local shard directory `local` to the object-store `prefix`; returns it."""
    from hvdistill.storage import Location

    for path in sorted(local.iterdir()):
        if path.is_file():
            (Location(prefix) / path.name).upload(path)
    return prefix
