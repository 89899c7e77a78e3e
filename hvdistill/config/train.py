"""The pretraining sections (`loss`, `optim`, `precision`, `dist`, `train`, `tracking`) and their checks.

`loss.depth_target_pool` is checked against `geometry.feature_stride` and the teacher's stride
(hvdistill/config/model.py: `teacher_stride`) here, with the loss that owns the dependent key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hvdistill.config.loader import check_name
from hvdistill.config.model import teacher_stride
from hvdistill.storage import location_problem

if TYPE_CHECKING:
    from hvdistill.config import Config


@dataclass(slots=True, kw_only=True)
class LossConfig:
    temperature: float = 0.07
    weight_ipv: float = 1.0
    weight_depth: float = 60.0
    weight_bev: float = 0.25
    gather_across_ranks: bool = True  # the loss owns the gather; identical with one process
    # FIFO of past (detached) keys as extra negatives; no momentum encoder (loss.queue_size before); 0 = off
    key_queue_size: int = 0
    tile_size: int = 4096  # keys per tile in the tiled InfoNCE; 0 = untiled
    depth_target_pool: int = 4  # min non-zero depth in each 4x4 patch (= the teacher's stride; ViT: 14)
    bev_start_epoch: int = 0  # two-stage schedule: BEV loss joins at this epoch
    max_bev_anchors: int = 0  # subsample BEV anchors per sample; 0 = all
    depth_reduction: Literal["cells_x_bins", "cells"] = "cells_x_bins"  # see docs/models.md
    # L2-normalise the superpoint/superpixel means before the InfoNCE; false = SLidR's
    # loss_superpixels_average (means of unit vectors, not renormalised), the published recipe
    renormalize_pooled: bool = False


@dataclass(slots=True, kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    reference_batch: int = 16  # lr is scaled by global_batch / reference_batch
    scale_lr: bool = True
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warm-up in optimizer steps; 0 = optim.warmup_fraction decides
    warmup_fraction: float = 0.0  # linear warm-up over this share of the run's optimizer steps; 0 = none
    grad_clip: float = 0.0  # global gradient-norm clipping (DeepSpeed's); 0 = off
    # large-batch rule (docs/training.md, "Large batches"): when scale_lr multiplies lr by more than
    # large_batch_above_scale, a warm-up left unset and a grad_clip left at 0 take the values below
    # (resolved at the start of a run, recorded in its config.yaml); 0 = never
    large_batch_above_scale: float = 2.0
    large_batch_warmup_fraction: float = 0.1  # 5 of the published 50 epochs (Goyal et al.: 5 epochs)
    large_batch_grad_clip: float = 5.0  # just above the gradient norm of healthy steps (measured 2-6)


@dataclass(slots=True, kw_only=True)
class PrecisionConfig:
    # dense image side (teacher, bridge, depth net); auto = bf16 where the device runs it natively
    # (CUDA with bf16, CPU with AVX512-BF16 or AMX), else fp32 -- resolved by hvdistill/precision.py
    image_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # sparse side: float32 on CPU; float16 is a GPU-only option (see LidarModelConfig)
    logits_dtype: Literal["float32"] = "float32"


@dataclass(slots=True, kw_only=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    zero_stage: int = 0
    # Ray Train workers (ranks): N, or [min, max] for an elastic group that continues on the nodes
    # left after a loss and grows back (the global batch stays train.global_batch whatever the size)
    num_workers: int | list[int] = 1
    use_gpu: bool = False
    sync_batchnorm: bool = True
    # Ray Train (launch/train.py): resources each worker reserves, restarts, where Ray keeps its state
    cpus_per_worker: int = 1  # CPUs a worker reserves (its DataLoader workers run inside them)
    gpus_per_worker: float = 1.0  # GPUs a worker reserves when use_gpu (fractions share a GPU)
    max_failures: int = 3  # worker-group restarts after a failure, each resuming the run; -1 = unlimited
    # Ray Train's storage: checkpoints (every rank's part) and the run's outputs (backbone, config,
    # metrics); a local path every node sees, or an object store (s3://bucket/prefix); empty =
    # <train.output_dir>/ray, which is only right on one node or with train.output_dir on NFS
    storage_path: str = ""
    # ZeRO-1/2 communication, copied into the generated DeepSpeed config (docs/training.md,
    # "Communication"): reduce gradients in buckets while the backward still runs; sizes in elements
    overlap_comm: bool = True  # a no-op on CPU (DeepSpeed's CPU accelerator has no streams)
    contiguous_gradients: bool = True  # reduced gradients copied into one buffer as they come
    reduce_bucket_size: int = 10_000_000  # 40 MB of fp32 gradients: ~5 buckets at the paper's 50M
    allgather_bucket_size: int = 50_000_000  # 200 MB of fp32 parameters gathered after each step
    allow_tf32: bool = True  # TF32 matmuls and convolutions for fp32 on CUDA (Ampere+); CPU: ignored


@dataclass(slots=True, kw_only=True)
class TrainConfig:
    epochs: int = 50
    global_batch: int = 16
    micro_batch: int = 4  # per rank
    seed: int = 0
    steps_per_epoch: int = 0  # 0 = derived from the dataset
    log_every: int = 10
    checkpoint_every: int = 1000
    output_dir: str = "runs"
    max_nonfinite_steps: int = 0  # skipped non-finite micro-batches tolerated; one more stops the run
    max_steps: int = 0  # optimizer steps; 0 = train.epochs decide
    eval_every: int = 0  # steps between held-out (val shard) losses; 0 = at the end of each epoch
    eval_batches: int = 0  # val micro-batches per evaluation; 0 = the whole val split
    keep_checkpoints: int = 3  # the newest K checkpoints stay, older ones are deleted
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the run dir's latest checkpoint
    run_name: str = ""  # run directory under output_dir; "" = generated on rank 0 and broadcast
    progress: bool = True  # live progress bar on rank 0
    deterministic: bool = False  # torch deterministic algorithms (exact resume tests)
    torch_threads: int = (
        0  # intra-op threads per rank; 0 = on Ray: dist.cpus_per_worker, else torch's default
    )


@dataclass(slots=True, kw_only=True)
class TrackingConfig:
    enabled: bool = True  # false: no MLflow at all (every rank gets a null tracker)
    # MLflow store: "" = sqlite:///<run dir>/mlruns.db; or sqlite:///<path>, http(s)://<mlflow server>,
    # postgresql://... / mysql://... (see docs/cluster.md, "Tracking")
    uri: str = ""
    experiment: str = "hvdistill"  # created in the store if missing
    run_name: str = ""  # MLflow run name; "" = the run directory's name
    # where a new experiment keeps artifacts: "" = <sqlite store's folder>/mlartifacts, or the
    # server's --artifacts-destination for http(s) stores; a path or a URI (s3://...)
    artifact_location: str = ""
    # MLflow system metrics (system/cpu_utilization_percentage, memory, disk, network; GPU with
    # pynvml) sampled in rank 0's process every system_metrics_interval seconds
    system_metrics: bool = False
    system_metrics_interval: float = 10.0
    # logging intervals rank 0 holds for a slow tracking server; when full the oldest is dropped
    # (counted, warned): training never waits for the server (hvdistill/train/metrics_sink.py)
    metrics_queue: int = 1000
    flush_timeout: float = 60.0  # seconds a checkpoint / the run's end waits for queued metrics


def loss_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `loss` section (its depth grid against the geometry's)."""
    p: list[str] = []
    if cfg.loss.temperature <= 0:
        p.append("loss.temperature: must be > 0")
    if cfg.loss.tile_size < 0 or cfg.loss.key_queue_size < 0:
        p.append("loss.tile_size / loss.key_queue_size: must be >= 0 (0 turns them off)")
    pool, im = cfg.loss.depth_target_pool, cfg.model.image
    stride = teacher_stride(im.arch, im.output_stride)
    if pool != cfg.geometry.feature_stride or pool != stride:
        p.append(
            f"loss.depth_target_pool: {pool} must equal geometry.feature_stride="
            f"{cfg.geometry.feature_stride} and the teacher's stride, {stride} (model.image.arch="
            f"{im.arch}; targets live on the depth grid); set loss.depth_target_pool={stride}"
        )
    return p


def optim_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `optim` section."""
    o = cfg.optim
    p: list[str] = []
    if o.lr <= 0 or o.reference_batch <= 0:
        p.append("optim.lr / optim.reference_batch: must be > 0")
    if o.warmup_steps < 0 or o.grad_clip < 0:
        p.append("optim.warmup_steps / optim.grad_clip: must be >= 0 (0 turns them off)")
    shares = {
        "warmup_fraction": o.warmup_fraction,
        "large_batch_warmup_fraction": o.large_batch_warmup_fraction,
    }
    for key, share in shares.items():
        if not 0 <= share < 1:
            p.append(f"optim.{key}: {share} must be in [0, 1) (a share of the run's steps; 0 = none)")
    if o.warmup_steps > 0 and o.warmup_fraction > 0:
        p.append(
            f"optim.warmup_steps / optim.warmup_fraction: {o.warmup_steps} and {o.warmup_fraction} both set; "
            "give the warm-up in steps or as a share of the run, and set the other to 0"
        )
    if o.large_batch_above_scale < 0 or o.large_batch_grad_clip < 0:
        p.append(
            "optim.large_batch_above_scale / optim.large_batch_grad_clip: must be >= 0 "
            "(0 turns the large-batch rule / its clipping off)"
        )
    return p


def dist_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `dist` section."""
    p: list[str] = []
    if cfg.dist.zero_stage not in (0, 1, 2, 3):
        p.append(f"dist.zero_stage: {cfg.dist.zero_stage} is not one of 0, 1, 2, 3")
    p += worker_problems(cfg)
    if cfg.dist.cpus_per_worker < 1:
        p.append(f"dist.cpus_per_worker: {cfg.dist.cpus_per_worker} must be >= 1")
    if cfg.dist.use_gpu and cfg.dist.gpus_per_worker <= 0:
        p.append(f"dist.gpus_per_worker: {cfg.dist.gpus_per_worker} must be > 0 with dist.use_gpu=true")
    if problem := location_problem(cfg.dist.storage_path, "dist.storage_path"):
        p.append(problem)
    if cfg.dist.max_failures < -1:
        p.append(f"dist.max_failures: {cfg.dist.max_failures} must be >= 0, or -1 for unlimited restarts")
    if min(cfg.dist.reduce_bucket_size, cfg.dist.allgather_bucket_size) < 1:
        p.append(
            "dist.reduce_bucket_size / dist.allgather_bucket_size: must be >= 1 element "
            "(defaults 10000000 / 50000000)"
        )
    return p


def worker_range(d: DistConfig) -> tuple[int, int]:
    """(min, max) ranks of `dist.num_workers` (equal for a fixed number)."""
    n = d.num_workers
    return (n, n) if isinstance(n, int) else (int(n[0]), int(n[-1]))


def group_sizes_that_fit(global_batch: int, low: int, high: int) -> list[int]:
    """Numbers of ranks in [low, high] that split `global_batch` evenly (one micro-batch size per rank)."""
    return [w for w in range(max(low, 1), high + 1) if global_batch % w == 0]


def worker_problems(cfg: Config) -> list[str]:
    """`dist.num_workers`: a number >= 1, or [min, max] whose ends both split the global batch."""
    n = cfg.dist.num_workers
    if isinstance(n, list) and (len(n) != 2 or not 1 <= n[0] <= n[1]):
        return [f"dist.num_workers: {n} must be one number or [min, max] with 1 <= min <= max"]
    low, high = worker_range(cfg.dist)
    if low < 1:
        return [f"dist.num_workers: {n} must be >= 1"]
    g = cfg.train.global_batch
    bad = [w for w in sorted({low, high}) if g <= 0 or g % w]
    if not bad or g <= 0:
        return []
    fits = group_sizes_that_fit(g, 1, max(high, low))
    return [
        f"dist.num_workers: {bad} rank(s) cannot split train.global_batch={g} evenly; group sizes up to "
        f"{high} that can: {fits}; choose among them (for [min, max], both ends) or change the global batch"
    ]


def train_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `train` section."""
    t = cfg.train
    p: list[str] = []
    if t.micro_batch <= 0 or t.global_batch <= 0 or t.global_batch % t.micro_batch:
        p.append(
            f"train.global_batch: {t.global_batch} must be a positive multiple of "
            f"train.micro_batch={t.micro_batch}"
        )
    if t.log_every < 1 or t.checkpoint_every < 1 or t.keep_checkpoints < 1:
        p.append("train.log_every / train.checkpoint_every / train.keep_checkpoints: must be >= 1")
    counts = (
        t.max_steps,
        t.eval_every,
        t.eval_batches,
        t.steps_per_epoch,
        t.max_nonfinite_steps,
        t.torch_threads,
    )
    if min(counts) < 0:
        p.append(
            "train.max_steps / eval_every / eval_batches / steps_per_epoch / max_nonfinite_steps / "
            "torch_threads: must be >= 0 (0 = the default rule)"
        )
    if t.epochs < 1 and t.max_steps == 0:
        p.append("train.epochs: must be >= 1 unless train.max_steps caps the run")
    if t.run_name:
        check_name(p, "train.run_name", t.run_name)
    return p


TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")


def tracking_problems(cfg: Config) -> list[str]:
    """Every inconsistency of the `tracking` section (the store's URI scheme)."""
    t = cfg.tracking
    p: list[str] = []
    if t.uri and not t.uri.startswith(TRACKING_SCHEMES):
        p.append(
            f"tracking.uri: {t.uri!r} is not a store MLflow 3.17 accepts without MLFLOW_ALLOW_FILE_STORE; "
            f"use '' (sqlite in the run directory), sqlite:///<path>.db or http://127.0.0.1:5000"
        )
    if not t.experiment.strip():
        p.append("tracking.experiment: must not be empty")
    if t.metrics_queue < 1:
        p.append(f"tracking.metrics_queue: {t.metrics_queue} must be >= 1 (logging intervals held)")
    if min(t.system_metrics_interval, t.flush_timeout) <= 0:
        p.append(
            f"tracking.system_metrics_interval / tracking.flush_timeout: {t.system_metrics_interval} / "
            f"{t.flush_timeout} must be > 0 seconds"
        )
    return p


def no_problems(cfg: Config) -> list[str]:
    """For sections whose fields are fully checked by their types (precision)."""
    return []
