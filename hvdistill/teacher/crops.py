"""Training crops and held-out views of image / side-output pairs, batched for teacher training.

Training crops are drawn like pretraining's per-camera crops (hvdistill/data/augment.py): a
random resized crop of the stored image with the `augment` section's area and aspect ranges,
resized to `geometry.crop_height` x `geometry.crop_width` (bilinear image, nearest targets),
then a horizontal flip with `augment.hflip_p`. The target is the class map
(`teacher_train.target=classes`) or the depth + camera-frame normal (geometry); a flip mirrors
the normal too (its x, pointing right, changes sign). Depth is kept in metres whatever the
crop's zoom, so a zoomed crop shows near-looking things at their true depth (docs/teacher.md).
Draw i of a run uses pair `order[i]` and the random stream `(seed, i)`, so a run is the same
whatever the number of loader workers.
Held-out views are whole stored images resized to the crop size (no randomness).

A damaged pair gives an item carrying its `PairError`; `collate` keeps the good items and
hands the errors on, so the training loop counts, logs and skips them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hvdistill.config import Config
from hvdistill.data.augment import crop_resize, sample_crop_box
from hvdistill.data.errors import SampleReadError
from hvdistill.teacher.data import ImagePair, PairError, read_geometry, read_pair


class Batch(NamedTuple):
    images: torch.Tensor  # (B, 3, Hc, Wc) float32 RGB in [0, 1]
    # classes: (B, Hc, Wc) int64 downstream class, 0 = ignore;
    # geometry: (B, 4, Hc, Wc) float32 depth in metres (0 = none) and unit normal (0 = none)
    targets: torch.Tensor
    errors: list[PairError]  # pairs of this batch that could not be read


Item = tuple[np.ndarray, np.ndarray] | PairError  # ((3, Hc, Wc) float32, the target) or why not


def draw_order(n_pairs: int, draws: int, seed: int) -> np.ndarray:
    """(draws,) pair indices: consecutive random permutations (epochs) of the pairs."""
    rng = np.random.default_rng(seed)
    epochs = -(-draws // n_pairs)
    return np.concatenate([rng.permutation(n_pairs) for _ in range(epochs)])[:draws]


def crop_geometry(
    target: np.ndarray, box: tuple[int, int, int, int], out_w: int, out_h: int, flip: bool
) -> np.ndarray:
    """(H, W, 4) depth + normal -> (4, out_h, out_w) crop, nearest; a flip negates the normal's x."""
    x0, y0, w, h = box
    crop = torch.from_numpy(np.ascontiguousarray(target[y0 : y0 + h, x0 : x0 + w])).permute(2, 0, 1)
    out = F.interpolate(crop[None], size=(out_h, out_w), mode="nearest-exact")[0]  # (4, out_h, out_w)
    if flip:
        out = out.flip(-1)
        out[1] = -out[1]
    return out.numpy()


def _view(
    pair: ImagePair, cfg: Config, lookup: np.ndarray | None, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """A crop (rng given) or the whole image (rng None), at the configured crop size."""
    geometry = cfg.teacher_train.target == "geometry"
    if geometry:
        image, target = read_geometry(pair, cfg.data)  # (H, W, 3), (H, W, 4) stored resolution
    else:
        image, target = read_pair(pair, cfg.data, lookup)  # (H, W, 3), (H, W) stored resolution
    height, width = target.shape[:2]
    box, flip = (0, 0, width, height), False
    if rng is not None and cfg.augment.enabled:
        box = sample_crop_box(width, height, cfg.augment, rng)
        flip = bool(rng.random() < cfg.augment.hflip_p)
    g = cfg.geometry
    if not geometry:
        return crop_resize(image, target, box, g.crop_width, g.crop_height, flip)  # (3, Hc, Wc), (Hc, Wc)
    no_ids = np.zeros((height, width), np.uint8)  # crop_resize also resizes an id map; none here
    img, _ = crop_resize(image, no_ids, box, g.crop_width, g.crop_height, flip)  # (3, Hc, Wc)
    return img, crop_geometry(target, box, g.crop_width, g.crop_height, flip)  # (4, Hc, Wc)


class PairViews(Dataset):
    """Item i: a training crop of pair `order[i]` (`order` given) or the whole view of pair i."""

    def __init__(
        self, pairs: list[ImagePair], cfg: Config, lookup: np.ndarray | None, order: np.ndarray | None = None
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
    targets = torch.from_numpy(np.stack([tgt for _, tgt in good]))  # (B, Hc, Wc) or (B, 4, Hc, Wc)
    return Batch(images, targets, errors)
