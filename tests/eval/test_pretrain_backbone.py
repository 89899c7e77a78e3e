"""A backbone exported by `hvdistill pretrain` fine-tunes: same features as the student it came from.

Runs a one-step pretraining on the synthetic world's shards (DeepSpeed engine on one CPU rank),
then loads its `backbone.pt` / `backbone.json` into the segmentation model and compares the
backbone features with those of the pretrained student's weights on the same voxels, then
fine-tunes from it for a step. Heavy: marked slow.
"""

from __future__ import annotations

import json

import pytest
import torch

from hvdistill.eval.backbone import load_backbone, read_state_dict
from hvdistill.eval.run import main as finetune_main
from hvdistill.eval.segmentation import build_segmentation_model
from hvdistill.models.lidar import build_lidar_model
from tests.eval.helpers import tiny_config, voxel_batch, write_labelled_shards
from tests.helpers import config_path

PRETRAIN = [
    "data.stored_image_width=96",
    "data.stored_image_height=54",
    "data.cameras=[CAM_FRONT,CAM_BACK]",
    "geometry.crop_height=32",
    "geometry.crop_width=64",
    "data.loader_workers=1",
    "data.shuffle_buffer=4",
    "train.progress=false",
    "train.torch_threads=1",
    "train.max_steps=1",
    "train.run_name=pre",
    "tracking.enabled=false",
]


@pytest.mark.slow
def test_backbone_exported_by_pretraining_reproduces_its_features_and_fine_tunes(nuscenes_root, tmp_path):
    from hvdistill.train.run import main as pretrain_main

    shards = write_labelled_shards(
        tmp_path / "shards", {"nuscenes": nuscenes_root}, cameras=("CAM_FRONT", "CAM_BACK")
    )
    over = [*PRETRAIN, f"data.shards=[{shards}]", f"train.output_dir={tmp_path}"]
    assert pretrain_main([config_path("tiny.yaml"), *over]) == 0
    run = tmp_path / "pre"
    meta = json.loads((run / "backbone.json").read_text())
    assert meta["step"] == 1 and meta["model"]["lidar"]["stem_channels"] == 8
    cfg = tiny_config()
    student = build_lidar_model(
        cfg.model, cfg.geometry
    ).eval()  # the pretrained weights, loaded the student's way
    student.load_backbone_state_dict(read_state_dict(run / "backbone.pt"))
    model = build_segmentation_model(cfg.model.lidar, 17).eval()
    report = load_backbone(model, str(run), cfg.geometry.voxel_size, cfg.model.lidar)
    assert report.source == "run_dir" and not report.missing and not report.unexpected
    coords, feats, shape, batch = voxel_batch(cfg)
    with torch.no_grad():
        assert torch.equal(
            model.features(coords, feats, shape, batch), student(coords, feats, shape, batch).voxel_features
        )
    ft = [f"data.shards=[{shards}]", f"finetune.backbone={run}", f"finetune.output_dir={tmp_path}"]
    ft += [
        "finetune.max_steps=1",
        "finetune.batch_size=2",
        "finetune.loader_workers=0",
        "tracking.enabled=false",
    ]
    assert finetune_main([config_path("tiny.yaml"), *ft, "finetune.run_name=ft"]) == 0
    assert json.loads((tmp_path / "ft" / "backbone_load.json").read_text())["sha256"] == report.sha256
