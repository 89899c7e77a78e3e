"""The typed training batch: what augmentation + collate hand to the distiller and the losses.

Points are offset-batched (one flat tensor, `point_batch` gives the sample of each point);
voxels are built once in collate (`hvdistill/data/collate.py`), the only place that decides
the sparse-tensor layout. Images of all samples and cameras are stacked on one axis, sample
by sample; `image_sample` gives the sample of each image (samples may have different camera
counts when datasets are mixed, e.g. 6 nuScenes cameras and 1 SemanticKITTI camera). Every geometric
quantity needed to relate the two views after augmentation travels with the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    # ---- LiDAR side (augmented LiDAR frame) ----
    points: torch.Tensor  # (P, 4) float32: x, y, z (augmented), intensity
    point_batch: torch.Tensor  # (P,) int64 sample index of each point
    voxel_coords: torch.Tensor  # (V, 4) int32: batch, z, y, x (spconv's index order)
    voxel_features: torch.Tensor  # (V, C_in) float32 (intensity of the kept point)
    point_to_voxel: torch.Tensor  # (P,) int64 voxel of each point
    spatial_shape: list[int]  # [Z, Y, X] voxel grid size
    # ---- image side ----
    images: torch.Tensor  # (N_img, 3, H, W) float32 RGB in [0, 1], augmented crops
    image_sample: torch.Tensor  # (N_img,) int64 sample of each image
    superpixels: torch.Tensor  # (N_img, H, W) int64, ids unique across the batch, -1 none
    intrinsics: torch.Tensor  # (N_img, 3, 3) float64, of the original stored image
    camera_to_lidar: torch.Tensor  # (N_img, 4, 4) float64, camera -> un-augmented LiDAR
    image_aug: torch.Tensor  # (N_img, 3, 3) float64 stored-image px -> crop px (u=col, v=row)
    lidar_aug: torch.Tensor  # (B, 4, 4) float64 un-augmented -> augmented LiDAR frame
    # ---- point <-> pixel pairs (after augmentation) ----
    pair_point: torch.Tensor  # (Q,) int64 index into points
    pair_image: torch.Tensor  # (Q,) int64 index into images
    pair_uv: torch.Tensor  # (Q, 2) float32 (u=col, v=row) in crop pixels
    pair_depth: torch.Tensor  # (Q,) float32 camera depth in metres
    # ---- pairs whose point lies outside the voxel crop: depth supervision only ----
    depth_only_image: torch.Tensor  # (R,) int64 image of each
    depth_only_uv: torch.Tensor  # (R, 2) float32 (u, v) crop pixels
    depth_only_depth: torch.Tensor  # (R,) float32 metres
    batch_size: int
    num_cameras: int  # cameras per sample (the largest count when samples differ)
    labels: torch.Tensor | None = None  # (P,) int64 per-point class (fine-tuning), 0 = ignore

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy every tensor to `device` (geometry stays float64). `non_blocking`: a copy from pinned
        memory to CUDA runs asynchronously on the current stream (the loop asks for it on CUDA only)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Every tensor in page-locked memory; the DataLoader calls it (`pin_memory`) on CUDA runs."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return Batch(**out)
