"""A ViT teacher: trained at its patch stride, saved as a DINOv2 release file, scored from that file.

`hvdistill teacher train` with `model.image.arch=vit_tiny_patch14` on the tiny world, both
targets; the file loads strictly, with format dinov2 or auto, into pretraining's image teacher;
the held-out score reads it back strictly; the output-stride keys (ResNet dilations) are not read
for a ViT, and its crop must hold a patch.
"""

from __future__ import annotations

import pytest
import torch

from hvdistill.cli import main
from hvdistill.config import RUN_SECTIONS, ConfigError, load_config, problems
from hvdistill.models.image.vit import build_vit
from hvdistill.teacher.backbone import save_backbone
from hvdistill.teacher.data import list_pairs
from hvdistill.teacher.train import Segmenter, evaluate
from tests.helpers.world import NUSCENES_VERSION
from tests.teacher.conftest import TINY, assert_loads_strictly, teacher_config

VIT = "model.image.arch=vit_tiny_patch14"


@pytest.mark.parametrize("target", ["classes", "geometry"])
def test_a_vit_teacher_trains_and_is_saved_as_a_dinov2_file(teacher_world, tmp_path, capsys, target):
    out = tmp_path / "teacher.pt"
    source = f"data.sources=[{{name: nuscenes, root: {teacher_world}, version: {NUSCENES_VERSION}}}]"
    argv = [source, *TINY, VIT, "teacher_train.steps=2", f"teacher_train.target={target}"]
    assert main(["teacher", "train", *argv, f"teacher_train.output={out}"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"pretrain with: model.image.weights={out} model.image.weights_format=dinov2 "
        f"model.image.random_init=false model.image.arch=vit_tiny_patch14 geometry.feature_stride=14 "
        f"loss.depth_target_pool=14"
    ) in printed
    info = assert_loads_strictly(out, "vit_tiny_patch14", "dinov2")
    assert_loads_strictly(out, "vit_tiny_patch14", "auto")  # recognised as a DINOv2 file by its keys
    saved = torch.load(out, weights_only=True)
    assert saved.keys() == build_vit("vit_tiny_patch14").state_dict().keys() and "mask_token" in saved
    assert (info["weights_format"], info["arch"], info["target"]) == ("dinov2", "vit_tiny_patch14", target)
    # TINY asks for a ResNet training stride of 16: a ViT trains and is scored at its patch
    assert (info["train_stride"], info["eval_stride"]) == (14, 14)
    assert info["config"]["teacher_train"]["output_stride"] == 16
    assert info["val"]["images"] == 4 and info["val"]["loaded_keys"] == len(saved) and info["final_loss"] > 0
    assert ("miou" in info["val"]) == (target == "classes")


def test_the_held_out_score_reads_the_file_back_strictly(teacher_world, tmp_path):
    cfg = teacher_config(teacher_world, tmp_path, VIT)
    backbone = build_vit("vit_tiny_patch14")
    weights = tmp_path / "teacher.pt"
    save_backbone(backbone, weights)
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "norm.weight"}, weights)  # one key short
    head = Segmenter(backbone, 17, cfg.model.image.mean, cfg.model.image.std).classifier
    with pytest.raises(ValueError, match=r"format dinov2\).*norm.weight"):
        evaluate(cfg, weights, head, list_pairs(cfg, "val"), torch.device("cpu"))


def test_the_segmenter_drops_the_token_centred_past_the_crop():
    """A 32-row crop pads to 3 patch rows; the third token's centre (row 34.5) is past the crop and
    dropped, so every row below the second cell's centre (20.5) holds that cell's value."""
    torch.manual_seed(0)
    model = Segmenter(build_vit("vit_tiny_patch14"), 5, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 56))  # (2, 5, 32, 56)
    assert out.shape == (2, 5, 32, 56)
    torch.testing.assert_close(out[:, :, 21:], out[:, :, 21:22].expand(-1, -1, 11, -1))
    assert not torch.allclose(out[:, :, 20], out[:, :, 7])  # the two kept cells differ


def test_output_strides_are_not_read_for_a_vit_but_its_crop_must_hold_a_patch():
    strides = ["teacher_train.output_stride=3", "model.image.output_stride=6"]
    assert problems(load_config(None, [VIT, *strides], sections=()), ["teacher_train"]) == []
    with pytest.raises(ConfigError) as err:
        load_config(None, strides, sections=RUN_SECTIONS["teacher"])  # a ResNet: both are checked
    assert "teacher_train.output_stride: 3" in str(err.value) and "model.image.output_stride: 6" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        load_config(None, [VIT, "geometry.crop_height=10"], sections=RUN_SECTIONS["teacher"])
    assert "geometry.crop_height: 10 is smaller than one 14 px patch" in str(err.value)
    assert "set geometry.crop_height >= 14" in str(err.value)


def test_adamw_takes_its_own_rate():
    cfg = load_config(None, ["teacher_train.optimizer=adamw", "teacher_train.lr=0.001"], sections=())
    assert problems(cfg, ["teacher_train"]) == []
    with pytest.raises(ConfigError, match=r"teacher_train.lr: 0.05 is an SGD rate.*e.g. 0.001"):
        load_config(None, ["teacher_train.optimizer=adamw"], sections=RUN_SECTIONS["teacher"])
