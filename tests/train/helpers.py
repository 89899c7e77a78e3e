"""Pretraining test helpers: shards of the synthetic world, the tiny training config, ranks with a deadline.

`shard_world` shards the session's synthetic nuScenes world (train and val) in this process with
sharding's own task function (`sharding.job.convert_unit`, what each Ray task runs) and manifest
writer, so the tests need no Ray cluster. `spawn_ranks` runs a function on several loopback
ranks and fails (killing them) when they do not finish in time, so a collective that hangs
fails the test instead of the suite. Ranks are forked (`tests.helpers.gloo.fork_ranks`): they
inherit the test process's imports and set one torch thread before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

from hvdistill.config import Config, SourceConfig, load_config
from tests.helpers import config_path
from tests.helpers.gloo import fork_ranks, free_port
from tests.helpers.world import NUSCENES_VERSION

STORED = ["data.stored_image_width=96", "data.stored_image_height=54"]
CAMERAS = "data.cameras=[CAM_FRONT,CAM_BACK]"
# tiny.yaml with 32 x 64 crops and two cameras: one micro-batch costs a fraction of a second on CPU
TINY_TRAIN = [
    *STORED,
    CAMERAS,
    "geometry.crop_height=32",
    "geometry.crop_width=64",
    "data.loader_workers=1",
    "data.shuffle_buffer=4",
    "train.progress=false",
    "train.torch_threads=1",  # 2 cores shared with the DataLoader worker (and other ranks)
    "tracking.enabled=false",
]


def shard_world(root: Path, out: Path) -> Path:
    """Train and val shards of the synthetic nuScenes world at `root`, written into `out`."""
    from sharding.job import shard_in_process

    cfg = load_config(None, [*STORED, CAMERAS], sections=("data",))
    sources = [
        SourceConfig(name="nuscenes", root=str(root), version=NUSCENES_VERSION, split=split)
        for split in ("train", "val")
    ]
    shard_in_process(sources, cfg.data, out)
    return out


def tiny_train_config(shards: Path, *overrides: str) -> Config:
    """configs/tiny.yaml + TINY_TRAIN reading `shards`, then `overrides`."""
    return load_config(config_path("tiny.yaml"), [*TINY_TRAIN, f"data.shards=[{shards}]", *overrides])


class Crash(RuntimeError):
    """What a hook raises to stop a run right after a checkpoint, as a killed worker would."""


def exact_resume_config(shards: Path, out: Path, name: str, zero: int, steps: int, *overrides: str) -> Config:
    """The tiny run the exact-resume tests compare bit for bit: everything that carries state
    across steps on (accumulation, augmentation, dropout, BEV anchors, key queue, momentum, cosine
    LR, BatchNorm, a mid-epoch DataLoader worker), fp32, deterministic, one thread, MLflow on."""
    return tiny_train_config(
        shards,
        f"train.output_dir={out}",
        f"train.run_name={name}",
        f"dist.zero_stage={zero}",
        "train.global_batch=2",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={steps // 2}",
        "train.log_every=1",
        "train.deterministic=true",
        "precision.image_dtype=float32",
        "loss.max_bev_anchors=16",
        "loss.key_queue_size=64",
        "tracking.enabled=true",
        *overrides,
    )


def spawn_ranks(fn, world: int, args: tuple, timeout: float) -> None:
    """Run fn(rank, world, port, *args) on `world` forked processes; fail past `timeout` seconds."""
    fork_ranks(fn, world, (world, free_port(), *args), timeout)


def rank_env(rank: int, world: int, port: int) -> None:
    """The launcher variables (torchrun's) for a spawned rank on 127.0.0.1."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
