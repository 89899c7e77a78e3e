"""Shared pieces of the eval tests: the tiny config, small voxelised clouds, an exported backbone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from hvdistill.config import Config, load_config
from hvdistill.data.shard_tar import scan_shard
from hvdistill.geometry.voxel import voxelize
from hvdistill.models.lidar import LidarStudent, build_lidar_model
from tests.helpers import config_path


def tiny_config(*overrides: str) -> Config:
    return load_config(config_path("tiny.yaml"), list(overrides))


def voxel_batch(cfg: Config, seed: int = 0, samples: int = 2, n: int = 1500):
    """Ground + wall clouds -> (coords (V, 4) int32 (b, z, y, x), feats (V, 1), [Z, Y, X], B)."""
    rng = np.random.default_rng(seed)
    coords, feats = [], []
    for b in range(samples):
        ground = np.c_[rng.uniform(-4, 4, (n // 2, 2)), rng.normal(-1.8, 0.03, n // 2)]
        wall = np.c_[
            rng.uniform(-4, 4, n - n // 2),
            rng.normal(3.0, 0.03, n - n // 2),
            rng.uniform(-1.8, 1, n - n // 2),
        ]
        cloud = np.c_[np.r_[ground, wall], rng.uniform(0, 1, n)].astype(np.float32)
        vox = voxelize(cloud, cfg.geometry.voxel_size, cfg.geometry.point_range)
        c = vox.coords  # (V_b, 3) ix, iy, iz
        coords.append(np.c_[np.full(len(c), b), c[:, 2], c[:, 1], c[:, 0]])
        feats.append(cloud[vox.kept, 3:4])
    shape = list(vox.spatial_shape[::-1])
    return (
        torch.from_numpy(np.concatenate(coords)).int(),
        torch.from_numpy(np.concatenate(feats)),
        shape,
        samples,
    )


def trained_looking_student(cfg: Config, seed: int = 0) -> LidarStudent:
    """A student with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    student = build_lidar_model(cfg.model, cfg.geometry, "cpu")
    for m in student.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return student.eval()


def export_backbone(student: LidarStudent, cfg: Config, out: Path, meta: bool = True) -> Path:
    """What a pretraining run exports: backbone.pt (plain tensors) and backbone.json (model config)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(student.backbone_state_dict(), out / "backbone.pt")
    if meta:
        info = {
            "model": {"lidar": dataclasses.asdict(cfg.model.lidar), "feature_dim": cfg.model.feature_dim},
            "geometry": {"voxel_size": cfg.geometry.voxel_size, "point_range": cfg.geometry.point_range},
            "step": 7,
        }
        (out / "backbone.json").write_text(json.dumps(info))
    return out


def write_labelled_shards(
    out: Path, roots: dict[str, Path], per_shard: int = 2, cameras: tuple[str, ...] = ("CAM_FRONT",)
) -> Path:
    """Shard the synthetic world's train and val splits in-process (no Ray): the samples
    `hvdistill shard` would write (prepare_sample + encode_sample + sharding's writer), a
    manifest.json listing them. Returns `out`."""
    from hvdistill.config import DataConfig, SourceConfig
    from hvdistill.data import schema
    from hvdistill.data.prepare import prepare_sample
    from hvdistill.data.sources import build_source
    from sharding.writer import ShardWriter
    from tests.helpers.world import NUSCENES_VERSION

    data = DataConfig(stored_image_width=96, stored_image_height=54, cameras=list(cameras))
    out.mkdir(parents=True, exist_ok=True)
    shards, sources = [], []
    for name, root in roots.items():
        for split in ("train", "val"):
            source = build_source(
                SourceConfig(name=name, root=str(root), version=NUSCENES_VERSION, split=split), data.cameras
            )
            keys = [k for chunk in source.chunks() for k in source.keys(chunk)]
            writer = ShardWriter(out, f"{name}-{split}-u00000", max_bytes=1 << 30, samples=per_shard)
            for key in keys:
                writer.write(schema.encode_sample(prepare_sample(source.read(key), data), data.jpeg_quality))
            shards += [{**s.to_dict(), "dataset": name, "split": split} for s in writer.commit()]
            config = {"stored_image_width": 96, "stored_image_height": 54}
            sources.append({"dataset": name, "split": split, "config": config, "complete": True})
    manifest = {"schema": schema.SCHEMA_VERSION, "shards": shards, "sources": sources, "skipped": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def damage_labels(shards, tmp_path, value: int = 200):
    """A copy of the shards whose first nuScenes val record has label `value` on its last point."""
    copy = shutil.copytree(shards, tmp_path / "shards")
    ref = next(scan_shard(str(sorted(copy.glob("nuscenes-val-*.tar"))[0])))
    name, offset, size = next(m for m in ref.members if m[0] == "labels.npy")
    with open(ref.shard, "r+b") as f:
        f.seek(offset + size - 1)  # the last label byte (the npy payload ends the member)
        f.write(bytes([value]))
    return copy, ref.key
