"""Train the image teacher's backbone on the renderer's maps; save it in the format pretraining loads.

The network is the backbone `model.image` describes, built by the same code the pretraining
teacher uses (hvdistill/teacher/backbone.py): a ResNet dilated to `teacher_train.output_stride`,
or a ViT at its patch stride, so the saved keys are the teacher's keys. A throwaway 1x1 head on
its features gives per-pixel outputs, upsampled to the crop from the feature cells' centres as
pretraining upsamples them (`feature_grid`, `upsample_cells`; a ViT's token centred in the
padding past the crop is dropped, as the pretraining teacher drops it). With
`teacher_train.target=classes` they are class logits trained with cross-entropy, class 0
ignored; with `geometry` they are depth-bin logits and a surface normal
(hvdistill/teacher/geometry.py), and no class information is read at all. Inputs are
normalised with `model.image.mean` / `std`, as the teacher does.

A ResNet's weights are stride-free: pretraining dilates them to `model.image.output_stride`, as
it does with an ImageNet-trained ResNet; a ViT runs at its patch in both. The held-out score is
taken the way pretraining will use the file: the saved checkpoint is read back through
`load_teacher_weights` (torchvision or DINOv2 format, strict) into a fresh backbone at the
pretraining stride, and the trained head is applied to its features.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hvdistill.config import Config
from hvdistill.config.teacher import saved_format
from hvdistill.eval.classes import class_map
from hvdistill.eval.metrics import ConfusionMatrix, json_safe, scores
from hvdistill.models.image.teacher import feature_grid, upsample_cells
from hvdistill.teacher.backbone import build_at, eval_stride, read_back, save_backbone, train_stride
from hvdistill.teacher.crops import Batch, PairViews, collate, draw_order
from hvdistill.teacher.data import Listing, PairError, list_pairs
from hvdistill.teacher.geometry import GeometryScores, geometry_loss, head_channels

log = logging.getLogger(__name__)


class TeacherDataError(RuntimeError):
    """Too many unreadable pairs, or none to train on: says how many and which."""


class NonFiniteTeacherLoss(FloatingPointError):
    """The teacher's loss stopped being finite: carries the step and the loss."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"teacher training loss is {loss} at step {step}; lower teacher_train.lr")


class Segmenter(nn.Module):
    """The teacher backbone (ResNet or ViT) plus a 1x1 head (class logits or depth bins + normal)."""

    def __init__(self, backbone: nn.Module, channels: int, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        self.grid = feature_grid(backbone)  # cell j sits at pixel stride * j + centre, as in pretraining
        self.classifier = nn.Conv2d(backbone.out_channels, channels, kernel_size=1)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, H, W) logits."""
        h, w = images.shape[-2:]
        hf, wf = self.grid.cells(h), self.grid.cells(w)  # cells centred inside the crop
        x = (images - self.mean) / self.std  # (N, 3, H, W)
        feats = self.backbone.features(x)[..., :hf, :wf]  # (N, C_b, Hf, Wf); a ViT's padding token dropped
        logits = self.classifier(feats)  # (N, C, Hf, Wf)
        return upsample_cells(logits, self.grid.stride, self.grid.centre, (h, w))  # (N, C, H, W)


@dataclass
class TeacherResult:
    """What a teacher run wrote and measured (also the content of `<output>.json`)."""

    weights: str
    weights_format: str  # how pretraining reads `weights`: torchvision (a ResNet) or dinov2 (a ViT)
    arch: str  # model.image.arch
    train_stride: int  # px between feature cells in training (a ViT: its patch)
    eval_stride: int  # ... when scored, as pretraining uses it
    target: str  # teacher_train.target: classes or geometry
    dataset: str
    roots: list[str]
    steps: int
    final_loss: float
    seconds: float
    steps_per_second: float
    train_pairs: int
    bad_pairs: list[dict[str, str]]
    val: dict[str, Any]
    config: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("teacher_train.device: cuda requested but no GPU is visible; set it to auto or cpu")
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else name.replace("auto", "cpu")
    )


class BadPairs:
    """Distinct unreadable pairs seen so far; a stop once more than the allowed fraction are bad."""

    def __init__(self, total: int, max_fraction: float, listed: list[PairError]):
        self.total, self.max_fraction, self.seen = total, max_fraction, {}
        self.add(listed)

    def add(self, errors: list[PairError]) -> None:
        for err in errors:
            if err.path not in self.seen:
                self.seen[err.path] = err.reason
                log.warning("teacher: skipping %s: %s", err.path, err.reason)
        if len(self.seen) > self.max_fraction * self.total:
            shown = "; ".join(f"{p}: {r}" for p, r in list(self.seen.items())[:5])
            raise TeacherDataError(
                f"{len(self.seen)} of {self.total} image / side-output pairs are unreadable, more than "
                f"teacher_train.max_bad_fraction={self.max_fraction}: {shown}"
            )


def _train_loader(cfg: Config, listing: Listing) -> DataLoader:
    t = cfg.teacher_train
    order = draw_order(len(listing.pairs), t.steps * t.batch_size, t.seed)
    views = PairViews(listing.pairs, cfg, listing.lookup, order)
    return DataLoader(
        views, batch_size=t.batch_size, shuffle=False, num_workers=t.loader_workers, collate_fn=collate
    )


def head_size(cfg: Config, dataset: str) -> int:
    """Channels of the 1x1 head: the downstream classes, or depth bins + normal."""
    t = cfg.teacher_train
    return head_channels(t) if t.target == "geometry" else len(class_map(dataset).names)


def _step(
    model: Segmenter, batch: Batch, opt: torch.optim.Optimizer, device: torch.device, cfg: Config
) -> float:
    """One optimiser step on the batch; returns its loss."""
    out = model(batch.images.to(device))  # (B, C, Hc, Wc)
    targets = batch.targets.to(device)  # (B, Hc, Wc) classes or (B, 4, Hc, Wc) depth + normal
    if cfg.teacher_train.target == "geometry":
        loss = geometry_loss(out, targets, cfg.teacher_train)
    else:
        loss = F.cross_entropy(out, targets, ignore_index=0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW (`teacher_train.optimizer`) over every parameter of `model`."""
    t = cfg.teacher_train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def train_segmenter(
    cfg: Config, listing: Listing, bad: BadPairs, device: torch.device
) -> tuple[Segmenter, float]:
    """`teacher_train.steps` optimiser steps (cosine lr); returns the model and the last logged mean loss."""
    t = cfg.teacher_train
    torch.manual_seed(t.seed)
    model = Segmenter(
        build_at(cfg, train_stride(cfg)),
        head_size(cfg, listing.dataset),
        cfg.model.image.mean,
        cfg.model.image.std,
    )
    model.to(device).train()
    opt = build_optimizer(model, cfg)
    losses: list[float] = []
    final = math.nan
    for step, batch in enumerate(_train_loader(cfg, listing), start=1):
        bad.add(batch.errors)
        lr = t.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / t.steps))  # cosine to 0 over the run
        for group in opt.param_groups:
            group["lr"] = lr
        if len(batch.images):
            loss = _step(model, batch, opt, device, cfg)
            if not math.isfinite(loss):
                raise NonFiniteTeacherLoss(step, loss)
            losses.append(loss)
        if step % t.log_every == 0 or step == t.steps:
            final = sum(losses) / max(len(losses), 1)
            log.info("teacher step %d/%d loss %.4f lr %.4g", step, t.steps, final, lr)
            losses = []
    return model, final


@torch.no_grad()
def evaluate(
    cfg: Config, weights: Path, classifier: nn.Conv2d, listing: Listing, device: torch.device
) -> dict:
    """Pixel scores of the saved weights at the pretraining stride on held-out views."""
    backbone, report = read_back(cfg, weights)  # strict, in the saved format, as pretraining loads it
    model = Segmenter(backbone, classifier.out_channels, cfg.model.image.mean, cfg.model.image.std)
    model.classifier.load_state_dict(classifier.state_dict())
    model.to(device).eval()
    scorer = _Scorer(cfg, listing.dataset)
    pairs = _capped(listing.pairs, cfg.teacher_train.eval_images)
    loader = DataLoader(
        PairViews(pairs, cfg, listing.lookup),
        batch_size=cfg.teacher_train.batch_size,
        num_workers=cfg.teacher_train.loader_workers,
        collate_fn=collate,
    )
    errors, scored = list(listing.bad), 0
    for batch in loader:
        errors += batch.errors
        scored += len(batch.images)
        if len(batch.images):
            scorer.update(model(batch.images.to(device)), batch.targets.to(device))
    for err in errors:
        log.warning("teacher eval: skipping %s: %s", err.path, err.reason)
    out = scorer.result()
    out.update(
        split=cfg.teacher_train.eval_split, images=scored, bad=len(errors), loaded_keys=len(report.loaded)
    )
    return out


class _Scorer:
    """Held-out scores of the target: pixel mIoU and accuracy, or the geometry metrics."""

    def __init__(self, cfg: Config, dataset: str):
        self.geometry = GeometryScores(cfg.teacher_train) if cfg.teacher_train.target == "geometry" else None
        self.names = [] if self.geometry else class_map(dataset).names
        self.cm = None if self.geometry else ConfusionMatrix(len(self.names), ignore_index=0)

    def update(self, out: torch.Tensor, targets: torch.Tensor) -> None:
        """Head output (B, C, Hc, Wc) and the batch's targets, on the same device."""
        if self.geometry is not None:
            self.geometry.update(out, targets)
        else:
            self.cm.update(out.argmax(1).cpu(), targets.cpu())  # type: ignore[union-attr]  # (B, Hc, Wc)

    def result(self) -> dict:
        return self.geometry.result() if self.geometry is not None else scores(self.cm, self.names)  # type: ignore[arg-type]


def _capped(pairs: list, cap: int) -> list:
    """At most `cap` pairs (0 = all), evenly spread over the list (so over scenes and cameras)."""
    if cap == 0 or len(pairs) <= cap:
        return list(pairs)
    step = len(pairs) / cap
    return [pairs[int(i * step)] for i in range(cap)]


def train_teacher(cfg: Config) -> TeacherResult:
    """List, train, save, score and describe: the whole `hvdistill teacher train` run."""
    t = cfg.teacher_train
    device = resolve_device(t.device)
    train = list_pairs(cfg, t.train_split)
    bad = BadPairs(len(train.pairs) + len(train.bad), t.max_bad_fraction, train.bad)
    if not train.pairs:
        raise TeacherDataError(f"no image / side-output pairs in the {t.train_split} split of {train.roots}")
    log.info(
        "teacher: %s trained at stride %d, scored at stride %d, saved in %s format",
        cfg.model.image.arch,
        train_stride(cfg),
        eval_stride(cfg),
        saved_format(cfg.model.image.arch),
    )
    start = time.perf_counter()
    model, final_loss = train_segmenter(cfg, train, bad, device)
    seconds = time.perf_counter() - start
    out = Path(t.output)
    save_backbone(model.backbone, out)
    val = evaluate(cfg, out, model.classifier, list_pairs(cfg, t.eval_split), device)
    result = TeacherResult(
        weights=str(out),
        weights_format=saved_format(cfg.model.image.arch),
        arch=cfg.model.image.arch,
        train_stride=train_stride(cfg),
        eval_stride=eval_stride(cfg),
        target=t.target,
        dataset=train.dataset,
        roots=train.roots,
        steps=t.steps,
        final_loss=final_loss,
        seconds=round(seconds, 2),
        steps_per_second=round(t.steps / seconds, 3),
        train_pairs=len(train.pairs),
        bad_pairs=[{"path": p, "reason": r} for p, r in bad.seen.items()],
        val=val,
        config=_config_used(cfg),
    )
    out.with_suffix(".json").write_text(json.dumps(json_safe(asdict(result)), indent=2) + "\n")
    return result


def _config_used(cfg: Config) -> dict[str, Any]:
    """The sections a teacher run reads, plus `model.image`."""
    return {
        "teacher_train": asdict(cfg.teacher_train),
        "model.image": asdict(cfg.model.image),
        "geometry": {"crop_height": cfg.geometry.crop_height, "crop_width": cfg.geometry.crop_width},
        "augment": asdict(cfg.augment),
        "data": asdict(cfg.data),
    }
