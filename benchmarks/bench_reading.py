"""Reading samples/s from shards vs the raw per-step path and vs SLIC on the fly.

Three ways to get one training sample (6 cameras, 1600x900 source images) ready for collate:
- shards: the WebDataset reader over `hvdistill shard` output (800x450 JPEGs, PNG superpixels,
  precomputed pairs): tar iteration + decoding with the schema's decoders;
- raw + PNG (the published code's per-step path): devkit lookups and the point file through
  the nuScenes source, 6 full-resolution JPEG decodes, projection into 6 cameras, and 6
  precomputed full-resolution superpixel PNGs read from files;
- raw + SLIC on the fly: the same but computing SLIC on the 6 full-resolution images.
The superpixel PNG files for the raw path hold SLIC of the stored image upscaled (nearest) to
full resolution: decoding cost depends on size and segment count, not on the exact ids, and
full-resolution SLIC for every image would dominate the set-up time.
Repeats are interleaved; medians are reported. Also compares superpixel encodings.

    .venv/bin/python -m benchmarks.bench_reading [--data /tmp/hvd-bench-nuscenes] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_sharding import ensure_dataset, source_config
from hvdistill.config import DataConfig
from hvdistill.data.prepare import compute_pairs, compute_superpixels, stored_size


def build_shards(root: Path, out: Path, cfg: DataConfig) -> None:
    if (out / "manifest.json").exists():
        return
    import ray

    from sharding.job import run_sharding

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        run_sharding(source_config(root), cfg, out, progress=False)
    finally:
        ray.shutdown()


def write_superpixel_pngs(source, keys: list[str], out: Path, cfg: DataConfig) -> dict[str, Path]:
    """Full-resolution superpixel PNG per camera token (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in keys:
        for cam in source.read(key).cameras:
            path = out / f"{cam.token}.png"
            if not path.exists():
                small = np.asarray(
                    Image.fromarray(cam.image).resize(stored_size(cam.size, cfg), Image.BILINEAR)
                )
                ids = compute_superpixels(small, cfg.superpixels).astype(np.uint8)
                Image.fromarray(ids).resize(cam.size, Image.NEAREST).save(path)
            paths[cam.token] = path
    return paths


def raw_png_step(source, key: str, pngs: dict[str, Path]) -> None:
    sample = source.read(key)  # devkit lookups, point file, 6 full-resolution JPEG decodes
    compute_pairs(sample, [c.size for c in sample.cameras])  # projection at full resolution
    for cam in sample.cameras:
        np.asarray(Image.open(pngs[cam.token])).astype(np.int64)


def raw_slic_step(source, key: str, cfg: DataConfig) -> None:
    sample = source.read(key)
    compute_pairs(sample, [c.size for c in sample.cameras])
    published = dataclasses.replace(cfg.superpixels, scale=1.0)  # the published path: full resolution
    for cam in sample.cameras:
        compute_superpixels(cam.image, published)


def shard_pass(shard_dir: Path) -> tuple[float, int]:
    from hvdistill.data.shards import build_shard_dataset

    ds = build_shard_dataset(
        DataConfig(resampled=False, shuffle_buffer=0), rank=0, world_size=1, shards=[str(shard_dir)]
    )
    t = time.perf_counter()
    n = sum(1 for _ in ds)
    return (time.perf_counter() - t) / n, n


def superpixel_encodings(shard_dir: Path) -> None:
    """Bytes and decode time of one stored superpixel map in three encodings."""
    from hvdistill.data import schema
    from sharding.verify import iter_records

    tar = sorted(shard_dir.glob("*.tar"))[0]
    ids = schema.decode_superpixels(next(iter_records(tar))["cam0.sp.png"])  # (450, 800)
    forms = {}
    for bits in (8, 16):
        buf = io.BytesIO()
        Image.fromarray(ids.astype(np.uint8 if bits == 8 else np.uint16)).save(buf, format="PNG")
        forms[f"png {bits}-bit"] = (buf.getvalue(), lambda b: np.asarray(Image.open(io.BytesIO(b))))
    forms["npy int16"] = (schema.encode_npy(ids), lambda b: np.load(io.BytesIO(b), allow_pickle=False))
    for name, (data, decode) in forms.items():
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            decode(data).astype(np.int16)
            ts.append(time.perf_counter() - t)
        print(
            f"  superpixels {ids.shape[1]}x{ids.shape[0]} as {name:<10}: {len(data) / 1024:6.1f} KiB, "
            f"{statistics.median(ts) * 1e3:.2f} ms"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="/tmp/hvd-bench-nuscenes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slic-samples", type=int, default=1, help="samples timed with SLIC on the fly")
    args = p.parse_args()
    root = ensure_dataset(Path(args.data), 2, 4, 1600, 900)
    cfg = DataConfig()
    shard_dir = Path(args.data + "-shards")
    build_shards(root, shard_dir, cfg)
    from hvdistill.data.sources import build_source

    source = build_source(source_config(root), cameras=cfg.cameras)
    keys = [k for c in source.chunks() for k in source.keys(c)]
    pngs = write_superpixel_pngs(source, keys, Path(args.data + "-superpixels"), cfg)
    raw, shard = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for key in keys:
            raw_png_step(source, key, pngs)
        raw.append((time.perf_counter() - t) / len(keys))
        per_sample, n = shard_pass(shard_dir)
        shard.append(per_sample)
    slic = []
    for key in keys[: args.slic_samples]:
        t = time.perf_counter()
        raw_slic_step(source, key, cfg)
        slic.append(time.perf_counter() - t)
    raw_ms, shard_ms, slic_ms = (statistics.median(x) * 1e3 for x in (raw, shard, slic))
    manifest_bytes = sum(f.stat().st_size for f in shard_dir.glob("*.tar"))
    print(
        f"samples: {len(keys)} (6 cameras, 1600x900 sources; shards store 800x450), repeats: {args.repeats}"
    )
    print(f"shards                 : {shard_ms:8.1f} ms/sample  {1e3 / shard_ms:7.1f} samples/s")
    print(f"raw + superpixel PNGs  : {raw_ms:8.1f} ms/sample  {1e3 / raw_ms:7.1f} samples/s")
    print(f"raw + SLIC on the fly  : {slic_ms:8.1f} ms/sample  ({len(slic)} sample(s))")
    print(f"speed-up vs PNG path   : {raw_ms / shard_ms:.1f}x (goal >= 3.5x)")
    print(f"speed-up vs on the fly : {slic_ms / shard_ms:.0f}x (goal >= 100x)")
    print(f"shard bytes per sample : {manifest_bytes / n / 1024:.0f} KiB")
    superpixel_encodings(shard_dir)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
