"""Reading one raw nuScenes sample: NuScenesSource.read vs the bare nuscenes-devkit path.

Both read the same sample of a synthetic nuScenes root (6 cameras at 1600x900, ~30k points):
- devkit: table lookups with `nusc.get`, `LidarPointCloud.from_file`, pyquaternion rotation
  matrices for the sensor and ego-pose records at both timestamps, 6 PIL JPEG decodes to RGB
  arrays, the lidarseg .bin mapped with the devkit's `LidarsegClassMapper.convert_label`;
- source: `NuScenesSource.read`, which does the same plus every validation that turns damage
  into SampleReadError (record sizes, finite points, image sizes vs the tables, label counts).
Repeats are interleaved over all samples; medians per sample are reported, with the ratio.

    .venv/bin/python -m benchmarks.bench_sources [--data /tmp/hvd-bench-nuscenes] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_sharding import VERSION, ensure_dataset, source_config
from hvdistill.config import NUSCENES_CAMERAS
from hvdistill.data.sources import build_source


def devkit_read(nusc, mapper, key: str) -> int:
    """The bare devkit read of one sample; returns a checksum so nothing is optimised away."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from pyquaternion import Quaternion

    sample = nusc.get("sample", key)
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(str(Path(nusc.dataroot) / lidar["filename"]))
    total = pc.points.shape[1]
    for sd in [lidar] + [nusc.get("sample_data", sample["data"][c]) for c in NUSCENES_CAMERAS]:
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        rotations = Quaternion(cs["rotation"]).rotation_matrix @ Quaternion(pose["rotation"]).rotation_matrix
        total += int(rotations[0, 0])
        if sd is not lidar:
            total += np.asarray(Image.open(Path(nusc.dataroot) / sd["filename"]).convert("RGB")).shape[0]
    labels_file = Path(nusc.dataroot) / nusc.get("lidarseg", lidar["token"])["filename"]
    raw = np.fromfile(labels_file, dtype=np.uint8)
    return total + int(mapper.convert_label(raw).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="/tmp/hvd-bench-nuscenes")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    root = ensure_dataset(Path(args.data), 2, 4, 1600, 900)
    source = build_source(source_config(root))
    keys = [k for c in source.chunks() for k in source.keys(c)]
    nusc = source.nusc
    mapper = LidarsegClassMapper(nusc)
    times: dict[str, list[float]] = {"devkit": [], "source": []}
    for _ in range(args.repeats):
        for key in keys:
            t = time.perf_counter()
            devkit_read(nusc, mapper, key)
            times["devkit"].append(time.perf_counter() - t)
            t = time.perf_counter()
            sample = source.read(key)
            times["source"].append(time.perf_counter() - t)
    print(
        f"{VERSION} at {root}: {len(keys)} samples x {args.repeats} repeats, "
        f"{len(sample.points)} points, {len(sample.cameras)} cameras at {sample.cameras[0].size}"
    )
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    for name, ms in med.items():
        print(f"{name:<8} {ms:8.1f} ms per sample")
    print(f"ratio source / devkit: {med['source'] / med['devkit']:.2f}")


if __name__ == "__main__":
    main()
