"""The pretraining losses: superpixel pooling, InfoNCE with large negative pools (cross-rank
keys, a key queue, key tiling), the LiDAR-supervised depth loss, the BEV loss, and the
weighted total (`HybridViewLoss`)."""

from hvdistill.loss_inputs import LossInputs
from hvdistill.losses.total import HybridViewLoss, LossTerms, build_hybrid_view_loss

__all__ = ["HybridViewLoss", "LossInputs", "LossTerms", "build_hybrid_view_loss"]
