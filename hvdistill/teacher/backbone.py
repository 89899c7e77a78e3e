"""The teacher's backbone as `hvdistill teacher train` builds, saves and reads it back: ResNet or ViT.

Built by the pretraining teacher's own code (hvdistill/models/image/teacher.py: `build_backbone`),
so the saved keys are the keys pretraining loads. Two kinds, told apart by `model.image.arch`:

- **ResNet** (resnet18, resnet50): trained dilated to `teacher_train.output_stride`, saved as a
  plain torchvision state dict (no fc) and read back at `model.image.output_stride` with format
  `torchvision`. The weights do not depend on the dilation.
- **ViT** (`vit_<size>_patch<p>[_reg<r>]`): its stride is its patch, at training and in
  pretraining alike; nothing dilates a ViT, so `teacher_train.output_stride` and
  `model.image.output_stride` (ResNet dilations) are not read for one. Saved as the DINOv2
  release's plain state dict (our ViT's keys are the release's, `mask_token` included), read
  back with format `dinov2`, strictly: pretraining loads it as it loads a downloaded DINOv2 file.
Which format an arch is saved in (`saved_format`) is decided in hvdistill/config/teacher.py, from
the config alone, so the study (launch/study.py) knows it without building a network.

`pretrain_overrides` is the line the CLI prints: the `model.image` keys that load the result,
plus, for a ViT, its arch and the 14 px grid pretraining needs (`geometry.feature_stride`,
`loss.depth_target_pool`; hvdistill/config/model.py checks them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hvdistill.config import Config
from hvdistill.config.model import vit_patch_size
from hvdistill.config.teacher import saved_format
from hvdistill.models.image.teacher import build_backbone
from hvdistill.models.image.weights import LoadReport, load_teacher_weights


def train_stride(cfg: Config) -> int:
    """The stride the backbone trains at: a ViT's patch, else `teacher_train.output_stride`."""
    return vit_patch_size(cfg.model.image.arch) or cfg.teacher_train.output_stride


def eval_stride(cfg: Config) -> int:
    """The stride pretraining uses the backbone at: a ViT's patch, else `model.image.output_stride`."""
    return vit_patch_size(cfg.model.image.arch) or cfg.model.image.output_stride


def build_at(cfg: Config, stride: int) -> nn.Module:
    """The random backbone of `model.image.arch` (a ResNet dilated to `stride`; a ViT at its patch)."""
    return build_backbone(cfg.model.image.arch, stride)


def save_backbone(backbone: nn.Module, path: Path) -> None:
    """The backbone's plain state dict of CPU tensors (torchvision or DINOv2 keys), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def read_back(cfg: Config, weights: Path) -> tuple[nn.Module, LoadReport]:
    """A fresh backbone at the pretraining stride with `weights` loaded strictly in the saved format."""
    backbone = build_at(cfg, eval_stride(cfg))
    report = load_teacher_weights(backbone, weights, saved_format(cfg.model.image.arch))
    return backbone, report


def pretrain_overrides(arch: str, weights: str) -> str:
    """The pretraining overrides that load the teacher of `arch` saved at `weights`."""
    line = (
        f"model.image.weights={weights} model.image.weights_format={saved_format(arch)} "
        f"model.image.random_init=false"
    )
    patch = vit_patch_size(arch)
    if patch is not None:
        line += f" model.image.arch={arch} geometry.feature_stride={patch} loss.depth_target_pool={patch}"
    return line
