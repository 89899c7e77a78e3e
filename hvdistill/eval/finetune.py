"""The fine-tuning / linear-probing loop: one readable function from a config to a scored model.

`finetune(cfg, run_dir, tracker)` runs in one process on one device (fine-tuning runs are
small; a sweep runs many of them side by side). `prepare(cfg, run_dir)` does steps 2 and 1, where
every user mistake shows (no shards, a fraction that keeps nothing, a backbone that does not
fit), so a caller can run it before it opens tracking and remove a run directory that never ran:
1. data: the training split's records, the label-fraction split over them (nuScenes scenes in
   the devkit's scene-table order, hvdistill/eval/splits.py; saved as `label_split.json`), the
   whole validation split (hvdistill/eval/scans.py);
2. model: the UNet backbone + a fresh classifier, the backbone loaded from `finetune.backbone`
   (the report saved as `backbone_load.json`), frozen for linear probing;
3. SGD (momentum, dampening, weight decay) with two parameter groups, trunk at
   `finetune.lr_trunk` and head at `finetune.lr_head` (`finetune.lr_probe` when probing), each
   following a cosine from its rate to 0 over every step of the run, updated per step;
4. steps: cross-entropy + Lovasz-softmax on the voxels (ignore label 0), `finetune.max_steps`
   or `finetune.epochs` passes over the kept scans (shuffled, augmented, last batch kept), at most
   `finetune.step_cap` (`step_budget`: the steps grow with the label fraction, as in SLidR);
5. evaluation per point over the whole validation split every `finetune.eval_every` steps and
   at the end (mIoU over the `finetune.miou_classes` class set, hvdistill/eval/metrics.py); the
   final scores, confusion matrix and per-class IoU written to the run directory. With
   `finetune.convergence_window` w the held-out loss is also scored at (1 - w) of the run, and
   `convergence.json` says whether it stayed flat since then (`convergence`).
A non-finite loss stops the run with `NonFiniteLoss` (step and loss terms); more unusable scans
than `finetune.max_bad_fraction` stops it too.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hvdistill.config import Config
from hvdistill.eval.backbone import load_backbone
from hvdistill.eval.classes import class_map
from hvdistill.eval.evaluate import evaluate
from hvdistill.eval.lovasz import lovasz_softmax
from hvdistill.eval.metrics import evaluation_scores, save_evaluation, scores, stratum_metrics
from hvdistill.eval.scans import ScanDataset, index_split, scan_refs
from hvdistill.eval.segmentation import SegmentationModel, build_segmentation_model
from hvdistill.eval.splits import (
    SPLIT_FILE,
    LabelSplit,
    find_scene_table,
    keep_every,
    make_split,
    no_table_message,
    read_scene_order,
)
from hvdistill.eval.voxels import SegBatch, Voxelizer, collate_scans
from hvdistill.storage import write_atomic

log = logging.getLogger(__name__)
LOAD_REPORT_FILE = "backbone_load.json"
CONVERGENCE_FILE = "convergence.json"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; carries the step and the loss terms."""

    def __init__(self, step: int, terms: dict[str, float]):
        super().__init__(f"non-finite fine-tuning loss at step {step}: {terms}")
        self.step, self.terms = step, terms


@dataclass
class FinetuneResult:
    run_dir: Path
    miou: float
    steps: int
    metrics: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    model: SegmentationModel | None = None  # the trained model, in eval mode


@dataclass
class Prepared:
    """What `prepare` builds before the first step: loaders, the split, the loaded model, the device."""

    train_loader: DataLoader
    val_loader: DataLoader
    data_info: dict[str, Any]
    split: LabelSplit
    model: SegmentationModel
    device: torch.device


def pick_device(choice: str) -> torch.device:
    """finetune.device: auto = CUDA when available; cuda without a GPU is refused."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "finetune.device=cuda but no CUDA device is visible; use finetune.device=auto or cpu"
        )
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def cosine_factor(step: int, total: int) -> float:
    """Learning-rate multiplier after `step` of `total` steps: 1 -> 0 along a half cosine."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, use_lovasz: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy (+ Lovasz-softmax) of (V, C) logits against (V,) labels; the loss and its terms."""
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    total, terms = ce, {"loss/ce": float(ce.detach())}
    if use_lovasz:
        lov = lovasz_softmax(logits.softmax(1), labels, ignore_index=ignore_index)
        total = total + lov
        terms["loss/lovasz"] = float(lov.detach())
    terms["loss/total"] = float(total.detach())
    return total, terms


def scene_order(cfg: Config) -> tuple[list[str] | None, str]:
    """(scene names in the devkit table's order, the table's path) for a nuScenes split; (None, "")
    for SemanticKITTI, or when no table is found for a fraction of 1 (every scene is kept). A
    fraction below 1 without a table is a ValueError that says how to give one."""
    ft = cfg.finetune
    if ft.dataset != "nuscenes":
        return None, ""
    k = keep_every(ft.label_fraction)
    roots = [(s.root, s.version) for s in cfg.data.sources if s.name == "nuscenes"]
    table = find_scene_table(ft.scene_table, roots)
    if not table and k > 1:
        raise ValueError(no_table_message(k))
    if not table or (k == 1 and not ft.scene_table):
        return None, ""
    return read_scene_order(table), table


def _loaders(cfg: Config, run_dir: Path) -> tuple[DataLoader, DataLoader, dict[str, Any], LabelSplit]:
    """Training loader over the label-fraction split, validation loader over the whole val split."""
    ft, geo = cfg.finetune, cfg.geometry
    cmap = class_map(ft.dataset)
    train = index_split(cfg.data, ft.dataset, ft.train_split)
    scans, bad_meta = scan_refs(train.refs)
    order, table = scene_order(cfg)
    split = make_split(
        scans, ft.dataset, ft.label_fraction, ", ".join(train.shards), scene_order=order, order_source=table
    )
    split.save(run_dir / SPLIT_FILE)
    keep = set(split.keys)
    train_refs = [r for r in train.refs if r.key in keep]
    val = index_split(cfg.data, ft.dataset, ft.val_split)
    collate = partial(collate_scans, voxel_size=geo.voxel_size, point_range=ft.point_range)
    augment = Voxelizer(geo.voxel_size, list(ft.point_range), ft, augment=True)
    plain = Voxelizer(geo.voxel_size, list(ft.point_range), ft, augment=False)
    generator = torch.Generator().manual_seed(ft.seed)
    workers = {"num_workers": ft.loader_workers, "collate_fn": collate}
    train_loader = DataLoader(
        ScanDataset(train_refs, cmap, augment, ft.seed, with_view=False),
        ft.batch_size,
        shuffle=True,
        generator=generator,
        **workers,
    )
    val_loader = DataLoader(ScanDataset(val.refs, cmap, plain), ft.eval_batch_size, **workers)
    info = {
        "split": split.summary(),
        "train_scans": len(train_refs),
        "val_scans": len(val.refs),
        "bad_shards": train.bad_shards + val.bad_shards,
        "bad_meta_records": bad_meta,
    }
    log.info("fine-tuning data: %s; %d val scans", split.summary(), len(val.refs))
    return train_loader, val_loader, info, split


def _model(cfg: Config, run_dir: Path, device: torch.device, num_classes: int) -> SegmentationModel:
    ft = cfg.finetune
    model = build_segmentation_model(cfg.model.lidar, num_classes, device)
    report = load_backbone(
        model,
        ft.backbone,
        cfg.geometry.voxel_size,
        cfg.model.lidar,
        strict=ft.strict_backbone,
        tracking_uri=cfg.tracking.uri,
        download_dir=run_dir / "backbone_source",
    )
    write_atomic(run_dir / LOAD_REPORT_FILE, json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    if ft.linear_probe:
        model.freeze_backbone()
    return model


def _check_bad(bad: int, seen: int, limit: float, what: str) -> None:
    if seen and bad / seen > limit:
        raise RuntimeError(
            f"{bad} of {seen} {what} scans were unusable (see the warnings), more than "
            f"finetune.max_bad_fraction={limit}"
        )


def _optimizer(model: SegmentationModel, cfg: Config, total: int) -> tuple[torch.optim.SGD, Any]:
    """SGD over the trunk and head groups, and the per-step cosine of every group's rate to 0."""
    ft = cfg.finetune
    head_lr = ft.lr_probe if ft.linear_probe else ft.lr_head
    optimizer = torch.optim.SGD(
        model.param_groups(ft.lr_trunk, head_lr),
        lr=head_lr,
        momentum=ft.momentum,
        dampening=ft.dampening,
        weight_decay=ft.weight_decay,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total))


def _train_step(
    model: SegmentationModel, batch: SegBatch, optimizer: torch.optim.SGD, cfg: Config, step: int
) -> dict[str, float]:
    """One SGD step on one batch; the loss terms (NonFiniteLoss, before any update, if not finite)."""
    model.train()
    logits = model(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)  # (V, C)
    loss, terms = segmentation_loss(
        logits, batch.voxel_labels, cfg.finetune.ignore_index, cfg.finetune.lovasz
    )
    if not math.isfinite(terms["loss/total"]):
        raise NonFiniteLoss(step, terms)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _final_scores(
    cfg: Config,
    model: SegmentationModel,
    val_loader: DataLoader,
    device: torch.device,
    run_dir: Path,
    run_info: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score the whole val split per point; write metrics.json (scores, strata, run facts), the CSVs
    and the per-scan matrices. The result's "tracked" holds the flat metrics to log (`stratum_metrics`)."""
    ft, cmap = cfg.finetune, class_map(cfg.finetune.dataset)
    ev = evaluate(model, val_loader, cmap.num_classes, ft.ignore_index, device, ft.range_edges)
    stats = ev.stats
    _check_bad(stats["bad_scans"], stats["bad_scans"] + stats["scans"], ft.max_bad_fraction, "validation")
    if stats["scans"] == 0:
        raise ValueError(
            f"data.shards: no scan of the {ft.dataset} {ft.val_split!r} split could be scored (see the "
            f"warnings); an mIoU needs a readable validation split"
        )
    extra = {
        **stats,
        **run_info,
        "dataset": ft.dataset,
        "label_fraction": ft.label_fraction,
        "linear_probe": ft.linear_probe,
        "backbone": ft.backbone or "random",
    }
    paths = save_evaluation(run_dir, ev, cmap.names, extra, ft.miou_classes)
    result = {**evaluation_scores(ev, cmap.names, ft.miou_classes), **extra}
    result["tracked"] = stratum_metrics(ev, ft.miou_classes)
    log.info(
        "mIoU %.4f over %d classes, %d points scored",
        result["miou"],
        result["classes_in_mean"],
        result["points"],
    )
    return result, paths


def prepare(cfg: Config, run_dir: Path) -> Prepared:
    """Steps 1-2 of the module docstring: the data, the label split (saved) and the loaded model."""
    ft, run_dir = cfg.finetune, Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(ft.seed)
    device, cmap = pick_device(ft.device), class_map(ft.dataset)
    model = _model(cfg, run_dir, device, cmap.num_classes)  # first: a backbone that does not fit fails fast
    train_loader, val_loader, data_info, split = _loaders(cfg, run_dir)
    return Prepared(train_loader, val_loader, data_info, split, model, device)


def split_tags(split: LabelSplit) -> dict[str, str]:
    """The label split as MLflow tags: k, units kept / total, and the kept scene names (nuScenes)."""
    tags = {
        "hvdistill.split.k": str(split.k),
        "hvdistill.split.units": f"{len(split.units_kept)}/{split.units_total} {split.unit}s",
        "hvdistill.split.order": split.order,
    }
    if split.unit == "scene":
        tags["hvdistill.split.scenes"] = " ".join(split.units_kept)
    return tags


def finetune(
    cfg: Config, run_dir: Path, tracker: Any = None, prepared: Prepared | None = None
) -> FinetuneResult:
    """Fine-tune (or linearly probe) on cfg.data.shards and score per point; see the module doc.

    `tracker` (hvdistill/tracking.py's Tracker, optional) receives the metrics as they come;
    `prepared` is `prepare(cfg, run_dir)` when the caller ran it already.
    """
    ft, run_dir = cfg.finetune, Path(run_dir)
    ready = prepared or prepare(cfg, run_dir)
    train_loader, val_loader, model, device = ready.train_loader, ready.val_loader, ready.model, ready.device
    if tracker is not None:
        tracker.set_tags(split_tags(ready.split))
    total = step_budget(ft, len(train_loader))
    check_at = round(total * (1 - ft.convergence_window)) if ft.convergence_window else 0
    held_out: dict[int, float] = {}  # step -> held-out loss (the convergence check reads it)
    optimizer, schedule = _optimizer(model, cfg, total)
    log_metrics = (lambda m, s: tracker.log_metrics(_finite(m), s)) if tracker else (lambda m, s: None)
    step, epoch, bad, seen, started = 0, 0, 0, 0, time.perf_counter()
    while step < total:
        train_loader.dataset.set_epoch(epoch)
        stepped = False
        for cpu_batch in train_loader:
            bad, seen = bad + cpu_batch.bad, seen + cpu_batch.bad + cpu_batch.batch_size
            batch = cpu_batch.to(device)
            if not bool((batch.voxel_labels != ft.ignore_index).any()):
                continue  # nothing labelled in this batch (all scans bad, or all ignore)
            terms = _train_step(model, batch, optimizer, cfg, step)
            schedule.step()
            step, stepped = step + 1, True
            if step % ft.log_every == 0 or step == total:
                lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
                log_metrics({**terms, **lrs, "epoch": epoch}, step)
                log.info("step %d/%d epoch %d loss %.4f", step, total, epoch, terms["loss/total"])
            if step < total and ((ft.eval_every and step % ft.eval_every == 0) or step == check_at):
                held_out[step] = _interim_eval(cfg, model, val_loader, device, log_metrics, step)
            if step >= total:
                break
        _check_bad(bad, seen, ft.max_bad_fraction, "training")
        if not stepped:
            raise RuntimeError(
                "no training scan of the label split has a labelled voxel; see the warnings above"
            )
        epoch += 1
    run_info = {**ready.data_info, "steps": step, "epochs_started": epoch, "bad_train_scans": bad}
    run_info["train_seconds"] = round(time.perf_counter() - started, 3)
    result, paths = _final_scores(cfg, model, val_loader, device, run_dir, run_info)
    if check_at:
        result["convergence"] = convergence(
            held_out.get(check_at, math.nan), result["tracked"]["val/loss"], ft
        )
        paths["convergence"] = run_dir / CONVERGENCE_FILE
        write_atomic(paths["convergence"], json.dumps(result["convergence"], indent=1) + "\n")
        result["tracked"]["val/converged"] = float(result["convergence"]["converged"])
    log_metrics(result["tracked"], step)  # val/miou, val/accuracy, val/loss, per stratum (metrics.py)
    return FinetuneResult(run_dir, result["miou"], step, result, paths, model)


def step_budget(ft: Any, steps_per_epoch: int) -> int:
    """The run's steps: `finetune.max_steps` when set; else `finetune.epochs` passes over the
    labelled scans (so the steps grow with the label fraction), at most `finetune.step_cap`."""
    if ft.max_steps:
        return ft.max_steps
    total = ft.epochs * steps_per_epoch
    return min(total, ft.step_cap) if ft.step_cap else total


def _interim_eval(
    cfg: Config, model: SegmentationModel, loader: DataLoader, device: Any, log_metrics: Any, step: int
) -> float:
    """Score the val split during training: log val/miou and val/loss; the held-out loss."""
    ft, cmap = cfg.finetune, class_map(cfg.finetune.dataset)
    ev = evaluate(model, loader, cmap.num_classes, ft.ignore_index, device, ft.range_edges)
    s = scores(ev.confusion, cmap.names, ft.miou_classes)
    loss = float(ev.stats["loss"])
    log_metrics({"val/miou": s["miou"], "val/classes_in_mean": s["classes_in_mean"], "val/loss": loss}, step)
    log.info(
        "step %d val mIoU %.4f over %d classes, held-out loss %.4f",
        step,
        s["miou"],
        s["classes_in_mean"],
        loss,
    )
    return loss


def convergence(start: float, end: float, ft: Any) -> dict[str, Any]:
    """Did the held-out loss stay flat over the run's last `convergence_window`? Converged when it fell
    by less than `convergence_tolerance` of its value at the window's start (a rise counts as flat:
    the run has stopped improving, whether or not it overfits)."""
    fall = (start - end) / start if math.isfinite(start) and math.isfinite(end) and start > 0 else math.nan
    return {
        "window": ft.convergence_window,
        "tolerance": ft.convergence_tolerance,
        "held_out_loss_at_window_start": start,
        "held_out_loss_at_end": end,
        "relative_fall": fall,
        "converged": bool(math.isfinite(fall) and fall < ft.convergence_tolerance),
    }
