"""The frozen-feature probe: a converged, cheap readout of what a backbone's features hold.

`frozen_probe(cfg, run_dir, tracker)` returns a `FinetuneResult` like `finetune()`, from the same
preparation (`prepare`: the label-fraction split of the training scans, the whole held-out split,
the backbone of `finetune.backbone` loaded by `load_backbone`), then, with no augmentation:
1. BatchNorm recalibration (`probe.recalibrate_bn`): every BatchNorm layer of the backbone has its
   running statistics reset and momentum None (a cumulative average over batches), and one
   no-grad pass in train mode over the training scans re-estimates them; then eval mode
   (this pass, step 2 and the cache live in hvdistill/eval/probe_features.py);
2. one no-grad pass over the training scans: each point's feature is the backbone's output at its
   voxel (`SegmentationModel.features`, through `point_to_voxel`); up to `probe.points_per_scan`
   labelled points inside the voxel range are drawn per scan (seeded by `finetune.seed` and the
   scan key) and cached as `probe_cache/train_features.npy` (N, D) float32 and
   `train_labels.npy` (N,) int64;
3. the two readouts of hvdistill/eval/probe_fit.py fitted on them (standardised with the training
   points' statistics): a class-balanced multinomial logistic regression to convergence (L-BFGS)
   and class prototypes (no optimisation);
4. one no-grad pass over the held-out scans: the per-voxel features are cached
   (`probe_cache/held_out/<batch>.npy`, `probe.cache_dtype`), each point takes its voxel's class
   under each readout, and both are scored by `Scorer` (overall, strata, per scan) on the features
   as cached (so a re-run from the cache scores the same): a point outside `finetune.point_range`
   has no feature and counts as predicted ignore, a miss.
Outputs: `logistic/` and `prototype/` (`save_evaluation`: metrics.json, confusion matrices, per
class, per scan) and `metrics.json` (the logistic readout's scores, both readouts', the fit's
facts and the seconds of every phase). `probe_cache/cache.json`, written once the cache is
complete, records what it was made from (backbone sha256, scan keys' hash, counts, settings): a
run given the same directory with a matching cache (and `probe.reuse_cache`) skips the backbone
passes and reads the features back. The result's `model` is None (the readouts are not a
classifier layer).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hvdistill.config import Config
from hvdistill.eval.classes import class_map
from hvdistill.eval.evaluate import Evaluation, Scorer
from hvdistill.eval.finetune import (
    FinetuneResult,
    Prepared,
    _check_bad,
    _finite,
    prepare,
    split_tags,
)
from hvdistill.eval.metrics import (
    METRICS_FILE,
    evaluation_scores,
    json_safe,
    save_evaluation,
    stratum_metrics,
)
from hvdistill.eval.probe_features import (
    CACHE_DIR,
    CACHE_FILE,
    HELD_OUT_DIR,
    TRAIN_FEATURES,
    TRAIN_LABELS,
    cache_fingerprint,
    held_out_features,
    read_cache,
    recalibrate_batchnorm,
    train_features,
    voxel_features,
)
from hvdistill.eval.probe_fit import Prototypes, Standardiser, fit_logistic, fit_prototypes
from hvdistill.eval.scans import ScanDataset
from hvdistill.eval.voxels import SegBatch, Voxelizer, collate_scans
from hvdistill.storage import write_atomic

log = logging.getLogger(__name__)
READOUT_PREFIX = {"logistic": "val", "prototype": "val_prototype"}  # readout -> MLflow metric prefix


def _plain_loaders(cfg: Config, ready: Prepared) -> tuple[DataLoader, DataLoader]:
    """Unaugmented, unshuffled loaders over the prepared training (label-fraction) and held-out scans."""
    ft, cmap = cfg.finetune, class_map(cfg.finetune.dataset)
    plain = Voxelizer(cfg.geometry.voxel_size, list(ft.point_range), ft, augment=False)
    collate = partial(collate_scans, voxel_size=cfg.geometry.voxel_size, point_range=ft.point_range)
    size = cfg.probe.batch_size or ft.eval_batch_size
    loaders = [
        DataLoader(
            ScanDataset(d.dataset.refs, cmap, plain, with_view=d.dataset.with_view),
            size,
            num_workers=ft.loader_workers,
            collate_fn=collate,
        )
        for d in (ready.train_loader, ready.val_loader)
    ]
    return loaders[0], loaders[1]


def point_predictions(voxel_pred: torch.Tensor, batch: SegBatch, ignore_index: int) -> torch.Tensor:
    """(V,) voxel classes -> (P,) int64 class per point; `ignore_index` where a point has no voxel."""
    pred = torch.full_like(batch.point_labels, ignore_index)  # (P,)
    inside = batch.point_to_voxel >= 0  # (P,)
    pred[inside] = voxel_pred.cpu()[batch.point_to_voxel[inside]]
    return pred


def score_readouts(
    readouts: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    pairs: Iterable[tuple[SegBatch, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
    range_edges: list[float],
) -> dict[str, Evaluation]:
    """Score each readout ((V, D) voxel features -> (V,) classes) on every point of the batches."""
    scorers = {name: Scorer(num_classes, ignore_index, range_edges) for name in readouts}
    for batch, feats in pairs:
        for name, readout in readouts.items():
            voxel_pred = readout(feats) if len(feats) else torch.zeros(0, dtype=torch.int64)  # (V,)
            scorers[name].add(point_predictions(voxel_pred, batch, ignore_index), batch)
    return {name: s.result() for name, s in scorers.items()}


def _training_side(
    cfg: Config,
    ready: Prepared,
    loader: DataLoader,
    cache_dir: Path,
    fingerprint: dict[str, Any],
    seconds: dict,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None, dict[str, int]]:
    """(N, D) features, (N,) labels, the reused cache record (None: computed now) and counts:
    read from a matching cache, else BatchNorm recalibrated and features extracted and cached."""
    record = read_cache(cache_dir, fingerprint) if cfg.probe.reuse_cache else None
    if record is not None:
        log.info("frozen probe: reusing the features cached in %s", cache_dir)
        x = np.load(cache_dir / TRAIN_FEATURES, allow_pickle=False)  # (N, D)
        return x, np.load(cache_dir / TRAIN_LABELS, allow_pickle=False), record, record["counts"]
    shutil.rmtree(cache_dir, ignore_errors=True)
    (cache_dir / HELD_OUT_DIR).mkdir(parents=True)
    model, device, started = ready.model, ready.device, time.perf_counter()
    if cfg.probe.recalibrate_bn:
        seen = recalibrate_batchnorm(model.backbone, lambda b: voxel_features(model, b, device), loader)
        if not seen:
            raise RuntimeError("frozen probe: no training scan has a voxel to recalibrate BatchNorm on")
    model.eval()
    seconds["recalibrate"] = time.perf_counter() - started
    started = time.perf_counter()
    x, y, counts = train_features(cfg, model, loader, device)
    seconds["train_features"] = time.perf_counter() - started
    np.save(cache_dir / TRAIN_FEATURES, x, allow_pickle=False)
    np.save(cache_dir / TRAIN_LABELS, y, allow_pickle=False)
    return x, y, None, counts


def _fit_readouts(
    cfg: Config, x: np.ndarray, y: np.ndarray, device: torch.device, seconds: dict
) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, Any]]:
    """The two readouts ((V, D) raw features -> (V,) classes) and the logistic fit's facts."""
    pr = cfg.probe
    feats, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)  # (N, D), (N,)
    standardise = Standardiser.fit(feats)
    z = standardise(feats)  # (N, D) float64
    logistic = fit_logistic(z, labels, pr.l2, pr.max_iterations, pr.tolerance, pr.history)
    seconds["fit_logistic"] = logistic.seconds
    started = time.perf_counter()
    prototypes: Prototypes = fit_prototypes(z, labels)
    seconds["fit_prototype"] = time.perf_counter() - started
    if not logistic.converged:
        log.warning(
            "frozen probe: L-BFGS stopped after %d iterations with gradient max %.3g > probe.tolerance=%g; "
            "raise probe.max_iterations",
            logistic.iterations,
            logistic.gradient_max,
            pr.tolerance,
        )
    readouts = {
        "logistic": lambda f: logistic.predict(standardise(f)),
        "prototype": lambda f: prototypes.predict(standardise(f)),
    }
    return readouts, logistic.facts()


def _held_out_side(
    cfg: Config, ready: Prepared, loader: DataLoader, cache_dir: Path, record: dict | None, readouts: dict
) -> tuple[dict[str, Evaluation], list[dict[str, Any]]]:
    """Both readouts scored on every held-out point; the cache's held-out index."""
    ft, cmap = cfg.finetune, class_map(cfg.finetune.dataset)
    entries = list(record["held_out"]) if record else []
    pairs = held_out_features(
        ready.model, loader, ready.device, cache_dir, entries, record is not None, cfg.probe.cache_dtype
    )
    with torch.no_grad():
        evs = score_readouts(readouts, pairs, cmap.num_classes, ft.ignore_index, list(ft.range_edges))
    stats = evs["logistic"].stats
    _check_bad(stats["bad_scans"], stats["bad_scans"] + stats["scans"], ft.max_bad_fraction, "validation")
    if stats["scans"] == 0:
        raise ValueError(
            f"data.shards: no scan of the {ft.dataset} {ft.val_split!r} split could be scored (see the "
            f"warnings); the probe needs a readable held-out split"
        )
    return evs, entries


def _save(
    cfg: Config, run_dir: Path, evs: dict[str, Evaluation], facts: dict[str, Any], flat: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Each readout's files into run_dir/<readout>/, the summary into run_dir/metrics.json (last)."""
    ft, cmap = cfg.finetune, class_map(cfg.finetune.dataset)
    paths: dict[str, Path] = {}
    readouts = {}
    for name, ev in evs.items():
        extra = {**ev.stats, **facts, "readout": name}
        saved = save_evaluation(run_dir / name, ev, cmap.names, extra, ft.miou_classes)
        paths.update({f"{name}/{key}": path for key, path in saved.items()})
        readouts[name] = evaluation_scores(ev, cmap.names, ft.miou_classes)
    result = {**readouts["logistic"], **evs["logistic"].stats, **facts, "readouts": readouts, "tracked": flat}
    paths["metrics"] = run_dir / METRICS_FILE
    write_atomic(paths["metrics"], json.dumps(json_safe(result), indent=2, sort_keys=True) + "\n")
    return result, paths


def probe_metrics(evs: dict[str, Evaluation], class_set: str, probe: dict[str, Any]) -> dict[str, float]:
    """The flat MLflow metrics: each readout's `stratum_metrics` under its READOUT_PREFIX, and the
    fit's facts as probe/<name> (iterations, converged, loss, gradient_max, train_points,
    cache_reused, seconds_<phase>)."""
    flat = {}
    for name, ev in evs.items():
        flat.update(stratum_metrics(ev, class_set, READOUT_PREFIX[name]))
    for key in (
        "iterations",
        "evaluations",
        "converged",
        "loss",
        "gradient_max",
        "train_points",
        "cache_reused",
    ):
        flat[f"probe/{key}"] = float(probe[key])
    flat.update({f"probe/seconds_{phase}": float(s) for phase, s in probe["seconds"].items()})
    return flat


def frozen_probe(
    cfg: Config, run_dir: Path, tracker: Any = None, prepared: Prepared | None = None
) -> FinetuneResult:
    """Probe the frozen backbone of `finetune.backbone` (see the module docstring); `tracker`
    (hvdistill/tracking.py's Tracker, optional) receives the metrics; `prepared` is
    `prepare(cfg, run_dir)` when the caller ran it already."""
    run_dir, started = Path(run_dir), time.perf_counter()
    ready = prepared or prepare(cfg, run_dir)
    if tracker is not None:
        tracker.set_tags(split_tags(ready.split))
    train, val = _plain_loaders(cfg, ready)
    cache_dir, seconds = run_dir / CACHE_DIR, {}
    fingerprint = cache_fingerprint(cfg, run_dir, train, val)
    x, y, record, counts = _training_side(cfg, ready, train, cache_dir, fingerprint, seconds)
    reused = record is not None
    readouts, fit = _fit_readouts(cfg, x, y, ready.device, seconds)
    phase = time.perf_counter()
    evs, entries = _held_out_side(cfg, ready, val, cache_dir, record, readouts)
    seconds["held_out"] = time.perf_counter() - phase
    if record is None:
        record = {"fingerprint": fingerprint, "counts": counts, "train_points": len(y), "held_out": entries}
        write_atomic(cache_dir / CACHE_FILE, json.dumps(record, indent=1) + "\n")  # complete: reusable
    seconds["total"] = time.perf_counter() - started
    probe = {
        **fit,
        "train_points": len(y),
        "feature_dim": int(x.shape[1]),
        "cache_reused": reused,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    facts = {
        **ready.data_info,
        **counts,
        "dataset": cfg.finetune.dataset,
        "backbone": cfg.finetune.backbone or "random",
    }
    facts.update({"label_fraction": cfg.finetune.label_fraction, "probe": probe})
    flat = probe_metrics(evs, cfg.finetune.miou_classes, probe)
    result, paths = _save(cfg, run_dir, evs, facts, flat)
    if tracker is not None:
        tracker.log_metrics(_finite(flat), fit["iterations"])
    log.info(
        "frozen probe: logistic mIoU %.4f (%s after %d L-BFGS iterations), prototype mIoU %.4f",
        result["miou"],
        "converged" if fit["converged"] else "NOT converged",
        fit["iterations"],
        result["readouts"]["prototype"]["miou"],
    )
    return FinetuneResult(run_dir, result["miou"], fit["iterations"], result, paths, None)
