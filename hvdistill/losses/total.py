"""The weighted HVDistill objective: total = w_ipv * IPV + w_depth * depth + w_bev * BEV.

`HybridViewLoss` is the one loss module of pretraining. It owns the cross-rank gathering and
the key queues (one per contrastive term, module buffers, so they are checkpointed), takes
the distiller's named features in a `LossInputs` (hvdistill/loss_inputs.py), and returns
the named terms in `LossTerms`. Weights default to 1 / 60 / 0.25 (LossConfig). Two-stage
schedule: before LossConfig.bev_start_epoch the BEV term is 0 and is not computed at all.

Normalisation: every term is this rank's sum divided by the global count of its rows / cells
(see hvdistill/losses/infonce.py). Summed over ranks the terms are the single-process losses
of the concatenated batch; engines that average gradients over ranks must back-propagate
`world_size() * total`. All ranks must call forward with the same epoch and the same set of
inputs present (the terms are collectives). Per forward: ONE exchange of every term's row count
(`dist.all_gather_counts`), then the key gathers of the IPV and BEV terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hvdistill import dist
from hvdistill.config import Config, GeometryConfig, LossConfig, ModelConfig
from hvdistill.geometry.frustum import RESNET_CELL_CENTRE, teacher_feature_grid
from hvdistill.loss_inputs import LossInputs
from hvdistill.losses.bev import bev_pairs
from hvdistill.losses.depth import depth_bins, depth_loss, depth_targets
from hvdistill.losses.infonce import build_infonce
from hvdistill.losses.pooling import pool_superpixels


@dataclass
class LossTerms:
    total: torch.Tensor  # weighted sum, what to back-propagate (times world_size if averaging)
    ipv: torch.Tensor
    depth: torch.Tensor
    bev: torch.Tensor
    num_superpixels: int = 0  # matched superpixels on this rank
    num_depth_cells: int = 0  # valid depth cells on this rank
    num_bev_anchors: int = 0  # BEV anchors on this rank (after subsampling)

    def as_floats(self) -> dict[str, float]:
        """Detached {"loss/total": ..., "loss/ipv": ...} of this rank's shares."""
        names = ("total", "ipv", "depth", "bev")
        return {f"loss/{k}": float(getattr(self, k).detach()) for k in names}


class HybridViewLoss(nn.Module):
    """IPV + depth + BEV with large negative pools; see the module docstring."""

    def __init__(
        self,
        loss_cfg: LossConfig,
        geometry_cfg: GeometryConfig,
        feature_dim: int = ModelConfig.feature_dim,
        seed: int = 0,
        cell_centre: float = RESNET_CELL_CENTRE,  # pixel of feature cell 0 (geometry/frustum.py: FeatureGrid)
    ) -> None:
        super().__init__()
        self.loss_cfg, self.geometry_cfg = loss_cfg, geometry_cfg
        self.cell_centre = cell_centre
        self.ipv_contrast = build_infonce(loss_cfg, feature_dim)
        self.bev_contrast = build_infonce(loss_cfg, feature_dim)
        self.seed = seed
        self.generator: torch.Generator | None = None  # seeded on first use, once ranks are known

    def _generator(self) -> torch.Generator:
        """BEV-anchor subsampling stream, seeded with seed + rank at first use."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed + dist.rank())
        return self.generator

    def bev_active(self, epoch: int) -> bool:
        """Whether the BEV term is computed at this epoch (two-stage schedule)."""
        return self.loss_cfg.weight_bev != 0 and epoch >= self.loss_cfg.bev_start_epoch

    def _pool(self, x: LossInputs):
        """The IPV rows: matched superpoint / superpixel means (hvdistill/losses/pooling.py)."""
        return pool_superpixels(
            x.pair_point_features,
            x.pair_superpixel,
            x.image_features,
            x.superpixels,
            normalize=self.loss_cfg.renormalize_pooled,
        )

    def _depth_targets(self, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(N_img, Hf, Wf) depth targets and their valid-cell count (a 0-d tensor, not synced)."""
        if x.pair_image is None or x.pair_uv is None or x.pair_depth is None:
            raise ValueError("depth loss needs pair_image, pair_uv and pair_depth in LossInputs")
        n_img, _, grid_h, grid_w = x.depth_logits.shape
        crop = tuple(x.image_features.shape[-2:])  # (H, W): the IPV map is at crop resolution
        pool, centre = self.loss_cfg.depth_target_pool, self.cell_centre
        targets = depth_targets(
            x.pair_image, x.pair_uv, x.pair_depth, n_img, grid_h, grid_w, pool, centre, crop
        )  # (N_img, Hf, Wf)
        g = self.geometry_cfg
        return targets, depth_bins(targets, g.depth_min, g.depth_max, g.depth_step)[1].sum()

    def _bev_pairs(self, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(K', C) LiDAR BEV anchors and (K', C) their image keys (hvdistill/losses/bev.py)."""
        if x.lidar_bev_features is None or x.lidar_bev_indices is None or x.image_bev is None:
            raise ValueError(
                "the BEV term is active (epoch >= loss.bev_start_epoch) but "
                "LossInputs lacks lidar_bev_features / lidar_bev_indices / image_bev"
            )
        return bev_pairs(
            x.lidar_bev_features,
            x.lidar_bev_indices,
            x.image_bev,
            self.geometry_cfg.bev_size,
            self.loss_cfg.max_bev_anchors,
            self._generator(),
            x.image_bev_occupied,
        )

    def forward(self, inputs: LossInputs, epoch: int) -> LossTerms:
        """The named terms and their weighted total at `epoch` (0-based).

        Every term's rows are prepared first; the row counts of all terms on every rank are then
        exchanged in ONE collective, which the terms use for their gathers and global
        normalisation (instead of one size exchange per term).
        """
        cfg, g = self.loss_cfg, self.geometry_cfg
        zero = inputs.pair_point_features.new_zeros((), dtype=torch.float32)
        pooled = self._pool(inputs)
        with_depth = cfg.weight_depth != 0 and inputs.depth_logits is not None
        targets, cells = self._depth_targets(inputs) if with_depth else (None, 0)
        bev_rows = self._bev_pairs(inputs) if self.bev_active(epoch) else None
        counts = [pooled.ids.numel(), cells, 0 if bev_rows is None else bev_rows[0].shape[0]]
        n_sp, n_cells, n_anchors = dist.all_gather_counts(counts, zero.device)  # each: per rank
        ipv = self.ipv_contrast(pooled.superpoints, pooled.superpixels, n_sp).loss
        depth, bev = zero, zero
        if with_depth:
            depth = depth_loss(
                inputs.depth_logits,
                targets,
                g.depth_min,
                g.depth_max,
                g.depth_step,
                cfg.depth_reduction,
                n_cells,
            ).loss
        if bev_rows is not None:
            bev = self.bev_contrast(*bev_rows, n_anchors).loss
        total = cfg.weight_ipv * ipv + cfg.weight_depth * depth + cfg.weight_bev * bev
        me = dist.rank()
        return LossTerms(total, ipv, depth, bev, n_sp[me], n_cells[me], n_anchors[me])


def build_hybrid_view_loss(cfg: Config) -> HybridViewLoss:
    """The pretraining loss from the whole config (depth cells centred where the teacher's sit)."""
    centre = teacher_feature_grid(cfg.model.image.arch, cfg.model.image.output_stride).centre
    return HybridViewLoss(cfg.loss, cfg.geometry, cfg.model.feature_dim, cfg.train.seed, centre)
