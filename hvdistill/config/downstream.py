"""The downstream sections and their checks: `finetune` (segmentation) and `sweep` (label fractions).

`label_fraction_k` is the one rule for a label fraction (1 / k for an integer k, SLidR's "keep 1
in k"): the config checks of `finetune.label_fraction`, `sweep.label_fractions` and
`study.probe_fractions` and the split itself (hvdistill/eval/splits.py) all call it, so a
fraction a sweep or a study accepts up front is one every trial can split by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hvdistill.config.loader import check_name, check_range
from hvdistill.config.model import UNET_STAGES

if TYPE_CHECKING:
    from hvdistill.config import Config

FRACTION_TOLERANCE = 1e-9  # relative: a label fraction must be 1 / k to this precision


@dataclass(slots=True, kw_only=True)
class FinetuneConfig:
    """Semantic segmentation fine-tuning and linear probing (docs/finetuning.md explains each number).

    The classes come from the dataset's label map (hvdistill/eval/classes.py): 17 outputs for
    nuScenes (16 classes + ignore 0), 20 for SemanticKITTI. The voxel size is
    `geometry.voxel_size`, the pretraining one; the point range is this section's own.
    """

    dataset: Literal["nuscenes", "semantickitti"] = "nuscenes"  # which dataset of data.shards
    train_split: str = "train"  # shard split fine-tuned on (label fractions select from it)
    val_split: str = "val"  # shard split evaluated, always whole
    ignore_index: int = 0
    backbone: str = ""  # "" = random init; a pretraining run dir, a backbone.pt, or runs:/<MLflow run id>
    strict_backbone: bool = True  # refuse missing / unexpected keys (shape mismatches are always refused)
    linear_probe: bool = False  # frozen backbone in eval mode; only the classifier trains, at lr_probe
    frozen_probe: bool = False  # readout by the converged frozen-feature probe (`probe` section), no SGD
    label_fraction: float = 1.0  # keep 1 in k = 1 / label_fraction scenes (nuScenes) / scans (KITTI)
    epochs: int = 100
    max_steps: int = 0  # > 0: stop after this many steps (the cosine spans them); 0 = epochs decide
    step_cap: int = 0  # > 0: with epochs deciding, at most this many steps (1% and 10% differ by labels)
    # held-out loss also scored at (1 - convergence_window) of the run; a run whose held-out loss fell
    # by less than convergence_tolerance (relative) since then counts as converged; 0 = no check
    convergence_window: float = 0.0
    convergence_tolerance: float = 0.02
    batch_size: int = 16
    eval_batch_size: int = 8
    eval_every: int = 0  # steps between evaluations of the val split; 0 = only the final one
    log_every: int = 10  # steps between logged training metrics
    lr_trunk: float = 0.02  # backbone (SLidR nuScenes; SemanticKITTI: 0.05; docs/method.md)
    lr_head: float = 2.0  # fresh classifier when fine-tuning (SLidR, both datasets)
    lr_probe: float = 0.05  # classifier when linear probing
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    lovasz: bool = True  # loss = cross-entropy + Lovasz-softmax; false = cross-entropy alone
    point_range: list[float] = field(default_factory=lambda: [-102.4, -102.4, -9.6, 102.4, 102.4, 9.6])
    rotation_degrees: float = 360.0  # yaw ~ U(0, rotation_degrees)
    flip_probability: float = 0.5  # of x and of y, each
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # uniform scale; [1, 1] = none
    seed: int = 0
    loader_workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    max_bad_fraction: float = 0.01  # stop when more of the scans read are unusable
    output_dir: str = "runs/finetune"
    run_name: str = ""  # run directory name under output_dir (a plain name); empty = generated
    # nuScenes label split: the devkit's scene table (<root>/<version>/scene.json, or its folder) whose
    # order SLidR walks; "" = the table of the nuScenes root in data.sources. Needed for fractions < 1
    scene_table: str = ""
    # classes averaged into the mIoU: ground_truth = those present in the evaluated split's ground
    # truth (fixed by the split, never by the predictions); all = every class of the label map, an
    # absent one counting 0 (semantic-kitti-api's iouEval); docs/finetuning.md
    miou_classes: Literal["ground_truth", "all"] = "ground_truth"
    # horizontal distances (m) from the LiDAR origin binning every evaluation's range strata
    # (hvdistill/eval/strata.py): [20, 40] = 0-20, 20-40, 40+ m; strictly increasing, all > 0
    range_edges: list[float] = field(default_factory=lambda: [20.0, 40.0])


RANDOM_INIT = "random"  # the sweep.checkpoints entry that means a randomly initialised backbone


@dataclass(slots=True, kw_only=True)
class SweepConfig:
    """A Ray Tune sweep of fine-tuning runs: checkpoints x label fractions x seeds (x learning rates).

    Each trial is the `finetune` section with its backbone, label fraction, seed and (when the
    lists are given) learning rates replaced; docs/finetuning.md, section "Sweeps".
    """

    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoints: list[str] = field(default_factory=lambda: [RANDOM_INIT])  # run dirs, backbone.pt, "random"
    lr_trunk: list[float] = field(default_factory=list)  # empty = finetune.lr_trunk alone
    lr_head: list[float] = field(default_factory=list)  # empty = finetune.lr_head alone
    max_concurrent: int = 1  # trials running at once (also bounded by the cluster's CPUs / GPUs)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    name: str = ""  # sweep directory under finetune.output_dir; empty = generated; same name = resume
    after_pretrain: bool = False  # `pretrain --ray`: sweep the exported backbone (and random) at the end


def label_fraction_k(fraction: float) -> tuple[int, str]:
    """(k, "") when `fraction` is 1 / k for an integer k (keep 1 in k units), else (0, the reason)."""
    if not 0 < fraction <= 1:
        return 0, f"{fraction:g} must be in (0, 1] (1 / k for an integer k: 0.01, 0.1, 0.25, 1.0, ...)"
    k = round(1.0 / fraction)
    if abs(k * fraction - 1.0) > FRACTION_TOLERANCE:
        return 0, (
            f"{fraction:g} is not 1 / k for an integer k (the SLidR protocol keeps 1 in k scenes or scans); "
            f"use e.g. {1 / k:g}"
        )
    return k, ""


def fraction_problems(p: list[str], key: str, fractions: list[float]) -> None:
    """Append a problem for every fraction of `key` that is not 1 / k, and for a repeated one."""
    for fraction in fractions:
        _, reason = label_fraction_k(fraction)
        if reason:
            p.append(f"{key}: {reason}")
    if len(set(fractions)) != len(fractions):
        p.append(f"{key}: {fractions} lists a fraction twice; give each once")


def _point_range_problems(p: list[str], ft: FinetuneConfig, voxel_size: float) -> None:
    """A [xmin, ymin, zmin, xmax, ymax, zmax] range whose voxel grid the UNet halves 4 times evenly."""
    r = ft.point_range
    if len(r) != 6 or any(lo >= hi for lo, hi in zip(r[:3], r[3:])):
        p.append(f"finetune.point_range: {r} must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max")
        return
    if voxel_size <= 0:
        return  # the geometry checks report it
    multiple = 2**UNET_STAGES
    for axis, lo, hi in zip("xyz", r[:3], r[3:]):
        cells = (hi - lo) / voxel_size
        if abs(cells - round(cells)) > 1e-6 * max(1.0, cells) or round(cells) % multiple:
            p.append(
                f"finetune.point_range: the {axis} extent {hi - lo:g} m is {cells:g} voxels of "
                f"geometry.voxel_size={voxel_size:g}; it must be a multiple of {multiple} voxels "
                f"({multiple * voxel_size:g} m) so the UNet's {UNET_STAGES} stride-2 levels keep every voxel"
            )


def finetune_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `finetune` section, with its fix."""
    p: list[str] = []
    ft = cfg.finetune
    fraction_problems(p, "finetune.label_fraction", [ft.label_fraction])
    _point_range_problems(p, ft, cfg.geometry.voxel_size)
    if ft.run_name:
        check_name(p, "finetune.run_name", ft.run_name)
    if ft.epochs < 1 and ft.max_steps < 1:
        p.append("finetune.epochs / finetune.max_steps: one of them must be >= 1")
    if ft.linear_probe and ft.frozen_probe:
        p.append("finetune.linear_probe / finetune.frozen_probe: choose one readout (set the other false)")
    check_range(p, "finetune.convergence_window", ft.convergence_window, 0.0, 0.9)
    if ft.convergence_tolerance <= 0:
        p.append(f"finetune.convergence_tolerance: {ft.convergence_tolerance} must be > 0 (e.g. 0.02)")
    for key in ("epochs", "max_steps", "step_cap", "eval_every", "loader_workers", "ignore_index"):
        if getattr(ft, key) < 0:
            p.append(f"finetune.{key}: {getattr(ft, key)} must be >= 0")
    for key in ("batch_size", "eval_batch_size", "log_every"):
        if getattr(ft, key) < 1:
            p.append(f"finetune.{key}: {getattr(ft, key)} must be >= 1")
    for key in ("lr_trunk", "lr_head", "lr_probe"):
        if getattr(ft, key) <= 0:
            p.append(f"finetune.{key}: {getattr(ft, key)} must be > 0")
    check_range(p, "finetune.momentum", ft.momentum, 0.0, 1.0)
    check_range(p, "finetune.dampening", ft.dampening, 0.0, 1.0)
    check_range(p, "finetune.flip_probability", ft.flip_probability, 0.0, 1.0)
    check_range(p, "finetune.rotation_degrees", ft.rotation_degrees, 0.0, 360.0)
    check_range(p, "finetune.max_bad_fraction", ft.max_bad_fraction, 0.0, 1.0)
    if ft.weight_decay < 0:
        p.append(f"finetune.weight_decay: {ft.weight_decay} must be >= 0")
    if len(ft.scale_range) != 2 or not 0 < ft.scale_range[0] <= ft.scale_range[1]:
        p.append(f"finetune.scale_range: {ft.scale_range} must be [low, high] with 0 < low <= high")
    if not ft.train_split or not ft.val_split or ft.train_split == ft.val_split:
        p.append(
            f"finetune.train_split / finetune.val_split: {ft.train_split!r} and {ft.val_split!r} must be "
            f"two different shard splits"
        )
    edges = ft.range_edges
    if not all(0 < e < float("inf") for e in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        p.append(
            f"finetune.range_edges: {edges} must be strictly increasing distances > 0 (e.g. [20.0, 40.0])"
        )
    return p


def sweep_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `sweep` section."""
    p: list[str] = []
    sw = cfg.sweep
    fraction_problems(p, "sweep.label_fractions", sw.label_fractions)
    if sw.name:
        check_name(p, "sweep.name", sw.name)
    for key in ("seeds", "checkpoints", "lr_trunk", "lr_head"):
        values = getattr(sw, key)
        if len(set(values)) != len(values):
            p.append(f"sweep.{key}: {values} lists a value twice; give each once")
    if sw.max_concurrent < 1:
        p.append(f"sweep.max_concurrent: {sw.max_concurrent} must be >= 1")
    for key in ("label_fractions", "seeds", "checkpoints"):
        if not getattr(sw, key):
            p.append(f"sweep.{key}: empty; give at least one value")
    for key in ("lr_trunk", "lr_head"):
        if any(v <= 0 for v in getattr(sw, key)):
            p.append(f"sweep.{key}: {getattr(sw, key)} must all be > 0")
    if sw.cpus_per_trial <= 0 or sw.gpus_per_trial < 0:
        p.append(
            f"sweep.cpus_per_trial / sweep.gpus_per_trial: {sw.cpus_per_trial} / {sw.gpus_per_trial} "
            f"must be > 0 / >= 0"
        )
    if any(not c for c in sw.checkpoints):
        p.append(f'sweep.checkpoints: an empty entry; write "{RANDOM_INIT}" for random init')
    return p
