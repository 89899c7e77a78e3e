"""Training crops and held-out views of image / class-map pairs, batched for teacher training.

Training crops are drawn like pretraining's per-camera crops (hvdistill/data/augment.py): a
random resized crop of the stored image with the `augment` section's area and aspect ranges,
resized to `geometry.crop_height` x `geometry.crop_width` (bilinear image, nearest classes),
then a horizontal flip with `augment.hflip_p`. Draw i of a run uses pair `order[i]` and the
random stream `(seed, i)`, so a run is the same whatever the number of loader workers.
Held-out views are whole stored images resized to the crop size (no randomness).

A damaged pair gives an item carrying its `PairError`; `collate` keeps the good items and
hands the errors on, so the training loop counts, logs and skips them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from hvdistill.config import Config
from hvdistill.data.augment import crop_resize, sample_crop_box
from hvdistill.data.errors import SampleReadError
from hvdistill.teacher.data import ImagePair, PairError, read_pair


class Batch(NamedTuple):
    images: torch.Tensor  # (B, 3, Hc, Wc) float32 RGB in [0, 1]
    classes: torch.Tensor  # (B, Hc, Wc) int64 downstream class, 0 = ignore
    errors: list[PairError]  # pairs of this batch that could not be read


Item = tuple[np.ndarray, np.ndarray] | PairError  # ((3, Hc, Wc) float32, (Hc, Wc) int64) or why not


def draw_order(n_pairs: int, draws: int, seed: int) -> np.ndarray:
    """(draws,) pair indices: consecutive random permutations (epochs) of the pairs."""
    rng = np.random.default_rng(seed)
    epochs = -(-draws // n_pairs)
    return np.concatenate([rng.permutation(n_pairs) for _ in range(epochs)])[:draws]


def _view(
    pair: ImagePair, cfg: Config, lookup: np.ndarray, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """A crop (rng given) or the whole image (rng None), at the configured crop size."""
    image, classes = read_pair(pair, cfg.data, lookup)  # (H, W, 3), (H, W) stored resolution
    height, width = classes.shape
    box, flip = (0, 0, width, height), False
    if rng is not None and cfg.augment.enabled:
        box = sample_crop_box(width, height, cfg.augment, rng)
        flip = bool(rng.random() < cfg.augment.hflip_p)
    g = cfg.geometry
    return crop_resize(image, classes, box, g.crop_width, g.crop_height, flip)  # (3, Hc, Wc), (Hc, Wc)


class PairViews(Dataset):
    """Item i: a training crop of pair `order[i]` (`order` given) or the whole view of pair i."""

    def __init__(
        self, pairs: list[ImagePair], cfg: Config, lookup: np.ndarray, order: np.ndarray | None = None
    ) -> None:
        self.pairs, self.cfg, self.lookup, self.order = pairs, cfg, lookup, order

    def __len__(self) -> int:
        return len(self.pairs) if self.order is None else len(self.order)

    def __getitem__(self, i: int) -> Item:
        if self.order is None:
            pair, rng = self.pairs[i], None
        else:
            pair = self.pairs[int(self.order[i])]
            rng = np.random.default_rng([self.cfg.teacher_train.seed, i])
        try:
            return _view(pair, self.cfg, self.lookup, rng)
        except SampleReadError as err:
            return PairError(err.path, err.reason)


def collate(items: list[Item]) -> Batch:
    """Stack the readable items; the others become the batch's `errors`."""
    good = [it for it in items if not isinstance(it, PairError)]
    errors = [it for it in items if isinstance(it, PairError)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.int64), errors)
    images = torch.from_numpy(np.stack([img for img, _ in good]))  # (B, 3, Hc, Wc)
    classes = torch.from_numpy(np.stack([cls for _, cls in good]))  # (B, Hc, Wc)
    return Batch(images, classes, errors)
