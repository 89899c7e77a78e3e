"""Read plans vs building the source in every worker: worker peak memory and driver planning time.

A tiny synthetic nuScenes scene (40 keyframes like nuScenes, 64x36 images, 720-ray LiDAR) is
generated once; its tables are then replicated into datasets of N scenes (fresh tokens, real
nuScenes scene names, every copy pointing at the same small sample files), so the tables grow
like a real dataset's while the files stay small (every copy carries a train scene name, so
N <= 700; the devkit wants one lidarseg file per record: those are symlinks). For each N, three
fresh processes:
- driver: loads the devkit tables (`build_source`), lists the units, resolves the keys of the
  split into read plans (time per key), and pickles the first unit's plans;
- worker with plans: what a sharding task now holds: the unit's plans, one sample read with
  `read_plan`;
- worker with the source: what a task held before: `build_source` (the whole devkit database),
  one sample read with `NuScenesSource.read`.
Each worker first imports what a sharding worker imports (sharding.job); peak memory is the
resident high-water mark the measured block adds on top of that (benchmarks/peak_memory.py),
and the process's total high-water mark. Planning time and memory are fitted linearly against
the number of table records and projected to nuScenes v1.0-trainval (850 scenes, 34,149
keyframes, the record counts the devkit prints when it loads it).

    .venv/bin/python -m benchmarks.bench_plans [--scenes 10 100 400] [--data /tmp/hvd-bench-plans]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VERSION = "v1.0-trainval"
FRAMES = 40  # keyframes per scene, as in nuScenes
STATIC = ("category", "attribute", "visibility", "sensor", "map")  # tables not copied per scene
# The record counts nuscenes-devkit prints when it loads v1.0-trainval, plus lidarseg's.
TRAINVAL_RECORDS = {
    "category": 32,
    "attribute": 8,
    "visibility": 4,
    "instance": 64_386,
    "sensor": 12,
    "calibrated_sensor": 10_200,
    "ego_pose": 2_631_083,
    "log": 68,
    "scene": 850,
    "sample": 34_149,
    "sample_data": 2_631_083,
    "sample_annotation": 1_166_187,
    "map": 4,
    "lidarseg": 34_149,
}
TRAINVAL_KEYFRAMES = 34_149


def base_scene(data: Path) -> Path:
    """One tiny synthetic scene of FRAMES keyframes in the nuScenes layout (generated once)."""
    from hvdistill.config import SynthConfig
    from hvdistill.synthetic import write_nuscenes

    root = data / "base"
    if not (root / VERSION / "scene.json").exists():
        cfg = SynthConfig(
            scenes=1,
            frames_per_scene=FRAMES,
            seed=1,
            image_width=64,
            image_height=36,
            lidar_beams=8,
            lidar_points_per_beam=90,
        )
        write_nuscenes(root, cfg, version=VERSION, progress=False)
    return root


def _retoken(value, tokens: set[str], copy: int):
    if isinstance(value, str) and value in tokens:
        return hashlib.md5(f"{value}/{copy}".encode()).hexdigest()
    if isinstance(value, list):
        return [_retoken(v, tokens, copy) for v in value]
    return value


def replicate(base: Path, scenes: int, out: Path) -> Path:
    """A nuScenes root of `scenes` copies of the base scene's records (shared sample files)."""
    from nuscenes.utils.splits import create_splits_scenes

    if (out / VERSION / "scene.json").exists():
        return out
    (out / VERSION).mkdir(parents=True, exist_ok=True)
    for sub in ("samples", "maps"):
        if not (out / sub).exists():
            (out / sub).symlink_to((base / sub).resolve())
    (out / "lidarseg" / VERSION).mkdir(parents=True, exist_ok=True)
    tables = {p.stem: json.loads(p.read_text()) for p in (base / VERSION).glob("*.json")}
    tokens = {r["token"] for name, rows in tables.items() if name not in STATIC for r in rows}
    names = create_splits_scenes()["train"][:scenes]  # all in train: every copy is planned
    result: dict[str, list] = {name: (rows if name in STATIC else []) for name, rows in tables.items()}
    for copy in range(scenes):
        for name, rows in tables.items():
            if name in STATIC:
                continue
            for row in rows:
                new = {k: _retoken(v, tokens, copy) for k, v in row.items()}
                if name == "scene":
                    new["name"] = names[copy]
                if name == "lidarseg":
                    new["filename"] = f"lidarseg/{VERSION}/{new['token']}_lidarseg.bin"
                    link = out / new["filename"]
                    if not link.exists():
                        link.symlink_to((base / row["filename"]).resolve())
                result[name].append(new)
    result["map"] = [{**result["map"][0], "log_tokens": [r["token"] for r in result["log"]]}]
    for name, rows in result.items():
        (out / VERSION / f"{name}.json").write_text(json.dumps(rows))
    return out


def records(root: Path) -> int:
    return sum(len(json.loads(p.read_text())) for p in (root / VERSION).glob("*.json"))


def source_config(root: Path):
    from hvdistill.config import SourceConfig

    return SourceConfig(name="nuscenes", root=str(root), version=VERSION, split="train")


def measure_driver(root: Path, plans_file: Path) -> dict:
    """Devkit load time, planning time per key, and the first unit's pickled plans."""
    from hvdistill.config import DataConfig
    from hvdistill.data.sources import build_source
    from sharding.job import plan_units

    cfg = DataConfig()
    t0 = time.perf_counter()
    source = build_source(source_config(root), cameras=list(cfg.cameras))
    t1 = time.perf_counter()
    units = plan_units(source, "train", cfg)
    t2 = time.perf_counter()
    plans = [[source.plan(k) for k in unit.keys] for unit in units]
    t3 = time.perf_counter()
    plans_file.write_bytes(pickle.dumps(plans[0]))
    keys = sum(len(u.keys) for u in units)
    return {
        "load_s": t1 - t0,
        "units_s": t2 - t1,
        "plan_s": t3 - t2,
        "keys": keys,
        "plan_ms_per_key": (t3 - t2) / keys * 1e3,
        "unit_plans_kib": plans_file.stat().st_size / 1024,
        "unit_keys": len(plans[0]),
    }


def measure_worker(kind: str, root: Path, plans_file: Path) -> dict:
    """Peak memory a sharding worker adds to read one sample (plans or a whole source)."""
    import sharding.job  # noqa: F401 - what every sharding worker imports
    from benchmarks.peak_memory import PeakRSS, status_kib
    from hvdistill.config import DataConfig
    from hvdistill.data.sources import build_source
    from hvdistill.data.sources.plan import read_plan

    with PeakRSS() as peak:
        if kind == "plans":
            plans = pickle.loads(plans_file.read_bytes())
            sample = read_plan(plans[0])
        else:
            source = build_source(source_config(root), cameras=list(DataConfig().cameras))
            sample = source.read(source.keys(source.chunks()[0])[0])
    return {
        "added_mb": peak.added_mb,
        "hwm_mb": status_kib("VmHWM") / 1024,
        "points": len(sample.points),
        "devkit_imported": "nuscenes" in sys.modules,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_plans", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(x: list[float], y: list[float], at: float) -> float:
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(slope * at + intercept)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, nargs="+", default=[10, 100, 400])
    p.add_argument("--data", default="/tmp/hvd-bench-plans")
    p.add_argument("--child", nargs=3, metavar=("KIND", "ROOT", "PLANS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, root, plans = args.child
        fn = measure_driver if kind == "driver" else lambda r, f: measure_worker(kind, r, f)
        print(json.dumps(fn(Path(root), Path(plans))))
        return
    data = Path(args.data)
    base = base_scene(data)
    rows = []
    for n in args.scenes:
        root = replicate(base, n, data / f"scenes-{n}")
        plans_file = data / f"plans-{n}.pkl"
        row = {"scenes": n, "records": records(root)}
        row["driver"] = run_child("--child", "driver", str(root), str(plans_file))
        row["plans"] = run_child("--child", "plans", str(root), str(plans_file))
        row["source"] = run_child("--child", "source", str(root), str(plans_file))
        rows.append(row)
        d = row["driver"]
        plans, source = row["plans"], row["source"]
        print(
            f"{n:4d} scenes {row['records']:>8,} records | driver: load {d['load_s']:6.2f} s, plan "
            f"{d['plan_s']:6.2f} s for {d['keys']:,} keys ({d['plan_ms_per_key']:.3f} ms/key), one unit's "
            f"plans {d['unit_plans_kib']:.0f} KiB | worker adds: plans {plans['added_mb']:7.1f} MB "
            f"(devkit imported: {plans['devkit_imported']}), source {source['added_mb']:7.1f} MB"
            f" | process peak: plans {plans['hwm_mb']:.0f} MB, source {source['hwm_mb']:.0f} MB",
            flush=True,
        )
    if len(rows) < 2:
        return
    x = [r["records"] for r in rows]
    target = sum(TRAINVAL_RECORDS.values())
    keys_per_record = [r["driver"]["keys"] / r["records"] for r in rows]
    print(f"\nprojection to nuScenes v1.0-trainval ({target:,} records, {TRAINVAL_KEYFRAMES:,} keyframes):")
    print(f"  worker with the source adds {fit(x, [r['source']['added_mb'] for r in rows], target):,.0f} MB")
    print(f"  worker with plans adds     {fit(x, [r['plans']['added_mb'] for r in rows], target):,.1f} MB")
    load = fit(x, [r["driver"]["load_s"] for r in rows], target)
    per_key = float(np.median([r["driver"]["plan_ms_per_key"] for r in rows]))
    print(f"  driver: devkit load {load:,.0f} s, planning {per_key * TRAINVAL_KEYFRAMES / 1e3:,.1f} s")
    print(f"  (train keys per record in the synthetic tables: {np.median(keys_per_record):.4f})")
    print(f"  cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
