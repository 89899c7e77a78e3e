"""Synthetic world generation speed: frames/s of one sweep + six cameras, per resolution.

    .venv/bin/python -m benchmarks.bench_synth [--repeats 3]

Interleaves the configurations (the LiDAR sweep alone, six cameras at the default resolution,
six cameras at 1600x900) and prints the median seconds per frame, frames/s, and each ratio
against the LiDAR-only anchor measured in the same run. The world is built once per
configuration (as the writers do per scene) and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from hvdistill.config import SynthConfig
from hvdistill.synthetic.frame import build_rig, frame_rng, generate_frame, sweep
from hvdistill.synthetic.layout import build_world


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    base = SynthConfig()
    configs = {
        "lidar sweep only": base,
        f"sweep + 6 cameras {base.image_width}x{base.image_height}": base,
        "sweep + 6 cameras 1600x900": SynthConfig(image_width=1600, image_height=900),
    }
    world = build_world(base, 0, base.frame_interval_s * (base.frames_per_scene - 1))
    rigs = {name: build_rig(cfg) for name, cfg in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, cfg in configs.items():
            start = time.perf_counter()
            if name == "lidar sweep only":
                sweep(world, rigs[name].lidar, 0.5, cfg, frame_rng(cfg, 0, r))
            else:
                generate_frame(cfg, 0, r % cfg.frames_per_scene, world=world, rig=rigs[name])
            if r:
                times[name].append(time.perf_counter() - start)
    anchor = statistics.median(times["lidar sweep only"])
    print(f"{'configuration':<34} {'s/frame':>8} {'frames/s':>9} {'x lidar':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<34} {med:8.3f} {1 / med:9.2f} {med / anchor:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
