"""The distiller: 3D student + frozen 2D teacher + trainable heads and depth lift.

`Distiller.forward(batch)` returns the features the hybrid-view loss consumes, as a
`LossInputs` (hvdistill/loss_inputs.py, a layer below both models/ and losses/), never a
loss: the loss owns the cross-rank gather and this module stays single-device with no
collective calls. `parameter_groups()` lists the
trainable parameters by component for the optimiser; the frozen teacher backbone is in none.

Under an engine (DeepSpeed, DDP): the frozen teacher backbone is not a registered submodule
(`image/teacher.py`), so `parameters()`, `named_parameters()`, `buffers()` and `state_dict()` of
the distiller hold only trainable parts (student, teacher head, bridge, depth net) plus their
BN statistics: ZeRO-3 never partitions the teacher and checkpoints never contain it, while
`.to(device)` still moves it. Build the model outside `deepspeed.zero.Init` (which would
partition every parameter created inside it). `backbone_state_dict()` is the export of the 3D
student backbone (no heads); `convert_sync_batchnorm` converts the trainable BatchNorms.
Precision: keep the weights float32 and wrap the forward (and the loss) in autocast; call
backward outside it. The sparse student and the BEV pooling run in float32 whatever autocast
surrounds them; the dense image side computes in `precision.image_dtype`.

Data flow for a batch of B samples with n_cam cameras (N = B * n_cam images):
  voxels -> student -> per-voxel IPV features (V, 64) and LiDAR BEV cells (K, 64)
  crops  -> teacher -> head map on its feature grid (N, 64, Hf, Wf) and IPV map (N, 64, 224, 416);
            Hf x Wf = 56 x 104 for the paper's ResNet at stride 4, 16 x 30 for a ViT/14
  head map + camera geometry -> depth net -> depth logits (N, D, Hf, Wf) -> lift -> image BEV
Feature cell j of the teacher sits at pixel stride * j + centre (4 j for the ResNets, 14 j + 6.5
for a ViT/14; derived from the network, hvdistill/geometry/frustum.py: `FeatureGrid`);
`check_feature_grid` makes sure the lift's frustum rays start there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hvdistill.batch import Batch
from hvdistill.config import Config
from hvdistill.loss_inputs import LossInputs, pair_superpixel_ids
from hvdistill.models.depth.lift import BEVLift, build_depth_lift
from hvdistill.models.image.teacher import ImageTeacher, build_image_teacher
from hvdistill.models.lidar.student import LidarStudent, build_lidar_model


@dataclass
class ParameterGroup:
    name: str
    params: list[nn.Parameter]


class Distiller(nn.Module):
    """Composes student, teacher and depth lift; see the module docstring."""

    def __init__(self, student: LidarStudent, teacher: ImageTeacher, lift: BEVLift | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.lift = lift  # None when both depth and BEV terms are off

    def forward(self, batch: Batch, with_bev: bool = True) -> LossInputs:
        """Features for the loss; `with_bev=False` (BEV term inactive) skips the image lift's
        frustum cells and pooling, so the BEV head and the lift's context branch get no gradient
        on such steps (wrap with find_unused_parameters=True under DDP)."""
        lidar = self.student(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)
        pair_voxel = batch.point_to_voxel[batch.pair_point]  # (Q,)
        image = self.teacher(batch.images)  # head (N, 64, Hf, Wf), ipv (N, 64, H, W)
        inputs = LossInputs(
            pair_point_features=lidar.ipv[pair_voxel],  # (Q, 64)
            pair_superpixel=pair_superpixel_ids(batch.superpixels, batch.pair_image, batch.pair_uv),  # (Q,)
            image_features=image.ipv,
            superpixels=batch.superpixels,
            # depth targets: every projected point, also those outside the voxel crop
            pair_image=torch.cat([batch.pair_image, batch.depth_only_image]),
            pair_uv=torch.cat([batch.pair_uv, batch.depth_only_uv]),
            pair_depth=torch.cat([batch.pair_depth, batch.depth_only_depth]),
            lidar_bev_features=lidar.bev,  # (K, 64)
            lidar_bev_indices=lidar.bev_indices,  # (K, 3)
        )
        if self.lift is not None:
            image_batch = batch.image_sample  # (N,)
            lifted = self.lift(
                image.head,
                batch.intrinsics,
                batch.camera_to_lidar,
                batch.image_aug,
                batch.lidar_aug[image_batch],
                image_batch,
                batch.batch_size,
                with_bev,
            )
            inputs.depth_logits = lifted.depth_logits  # (N, D, Hf, Wf)
            inputs.image_bev = lifted.bev  # (B * S * S, 64)
            inputs.image_bev_occupied = lifted.occupied  # (B * S * S,) bool
        return inputs

    def parameter_groups(self) -> list[ParameterGroup]:
        """Trainable parameters by component (the frozen teacher backbone is excluded)."""
        groups = [
            ParameterGroup("student", [p for p in self.student.parameters() if p.requires_grad]),
            ParameterGroup("image_head", [p for p in self.teacher.head.parameters() if p.requires_grad]),
        ]
        if self.lift is not None:
            groups.append(
                ParameterGroup("depth_lift", [p for p in self.lift.parameters() if p.requires_grad])
            )
        return groups

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The teacher backbone's parameters (not among `parameters()`; see the module docstring)."""
        return list(self.teacher.backbone.parameters())

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The 3D student backbone (sparse UNet, no heads) as plain tensors: `backbone.pt`'s content.

        Under ZeRO-3 the parameters are partitioned: gather them first
        (`deepspeed.zero.GatheredParameters(model.student.backbone.parameters())`).
        Load with `LidarStudent.load_backbone_state_dict`.
        """
        return self.student.backbone_state_dict()


def convert_sync_batchnorm(model: Distiller) -> Distiller:
    """Every trainable BatchNorm of `model` -> `nn.SyncBatchNorm` (in place; returns `model`).

    Covers the student's `nn.BatchNorm1d` over sparse feature rows (V, C) (SyncBatchNorm accepts
    any (N, C, ...) input and weighs each rank by its own row count, so ranks with different
    voxel counts give the statistics of the concatenated rows) and the depth net's
    `BatchNorm2d` / camera `BatchNorm1d`. The frozen teacher backbone is not a submodule and
    keeps its plain, eval-mode BatchNorms. GPU only: torch's SyncBatchNorm refuses CPU inputs
    in training as soon as a process group exists (even a 1-rank gloo group), so the engine
    converts only when `dist.use_gpu` and `dist.sync_batchnorm` are set, before it wraps the
    model. Eval mode and runs without a process group use the running statistics / plain batch
    norm as before.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the registered children, in place


def check_feature_grid(teacher: ImageTeacher, lift: BEVLift | None) -> None:
    """Raise unless the lift's frustum puts feature cell j where the teacher's cell j looks.

    The teacher derives its cells' receptive-field centres from its own modules (stride * j +
    centre px, `image/teacher.py: feature_grid`); the frustum rays must start at those pixels.
    """
    if lift is None:
        return
    stride, centre = teacher.grid
    u = lift.frustum[0, 0, :, 0]  # (Wf,) u of the frustum's first row of cells
    v = lift.frustum[0, :, 0, 1]  # (Hf,) v of its first column
    expected = torch.arange(u.numel(), dtype=u.dtype, device=u.device) * stride + centre
    expected_v = torch.arange(v.numel(), dtype=v.dtype, device=v.device) * stride + centre
    if not (torch.equal(u, expected) and torch.equal(v, expected_v)):
        raise ValueError(
            f"the lift's frustum puts feature cells at u = {u[:3].tolist()}..., the teacher's cells look at "
            f"{expected[:3].tolist()}... (stride {stride}, centre {centre} px); build the frustum with "
            "the teacher's feature_grid"
        )


def build_distiller(cfg: Config, device: torch.device | str = "cpu") -> Distiller:
    """Student, teacher (weights from cfg.model.image) and lift for `device`.

    The dense image side computes in the dtype `cfg.precision.image_dtype` resolves to on `device`
    (hvdistill/precision.py; `auto` = bf16 only where the hardware runs it natively).
    """
    student = build_lidar_model(cfg.model, cfg.geometry, device)
    teacher = build_image_teacher(cfg.model, cfg.precision, device).to(device)
    needs_lift = cfg.loss.weight_depth != 0 or cfg.loss.weight_bev != 0
    lift = build_depth_lift(cfg.model, cfg.geometry, cfg.precision, device).to(device) if needs_lift else None
    check_feature_grid(teacher, lift)
    return Distiller(student, teacher, lift)
