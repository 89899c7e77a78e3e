"""The DeepSpeed engine (the only DeepSpeed importer): process group, config, optimizer, backward rule.

Process group (`init_distributed`): an existing default group is reused (Ray Train, a caller's
own); with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the environment (torchrun, the
`deepspeed` launcher) the group is created from them; a single process without them gets a
1-rank gloo group on 127.0.0.1 and a free port, with the variables DeepSpeed asserts (LOCAL_RANK)
set for the run and removed again by `shutdown_distributed`, so DeepSpeed never looks for mpi4py.

DeepSpeed config (`deepspeed_config`): generated from ours, the one source of truth:
global batch = `train.global_batch` whatever the number of ranks; micro-batch = `train.micro_batch`,
or the largest smaller one that splits the global batch over the ranks present (`batch_split`:
an elastic group's size is known only at its start); gradient accumulation = global / (micro x
world); a global batch that does not split evenly over the ranks is a ConfigError listing the
group sizes that work; ZeRO stage = `dist.zero_stage` (0, 1 or 2; 3 is refused: it releases
parameters between forward and backward, which spconv's backward cannot take), clipping =
`optim.grad_clip`, no
config-level optimizer or scheduler (a client torch optimizer and LR schedule), no fp16/bf16
section.

Precision: fp32 master weights and an fp32 DeepSpeed engine. The dense image side (teacher,
bridge, depth net) computes under torch autocast in the dtype `precision.image_dtype` resolves to
(the modules own their autocast regions, hvdistill/precision.py); the spconv student, the loss
logits and every gradient stay fp32. DeepSpeed's bf16/fp16 modes are not used because they cast
the whole module (spconv has no bf16 kernels, the sparse side must stay fp32) and fp16 adds
loss scaling to a loss that is fp32 anyway. float16 on CPU is refused as a config error.

Backward rule: `HybridViewLoss` returns per-rank shares whose sum over ranks is the loss of the
global micro-batch; DeepSpeed averages gradients over the data-parallel ranks and divides the
loss by the gradient-accumulation steps itself (`engine.backward(loss)` scales by 1 / GAS). So
`Engine.backward` back-propagates `world_size * total`: after averaging, the gradient is the
gradient of the global micro-batch loss, averaged over the accumulation window.

CPU traps (docs/training.md): the shared-memory comm op that DeepSpeed JIT-compiles with g++
on its first initialize (43-70 s) serves only `inference_all_reduce` (tensor-parallel
inference), never training, so it is switched off on CPU before the first initialize; a client
optimizer avoids the fused_adam JIT build; runs end with barrier + destroy_process_group.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from hvdistill.batch import Batch
from hvdistill.config import Config, ConfigError
from hvdistill.loss_inputs import LossInputs
from hvdistill.precision import choose_image_dtype
from hvdistill.train.partitions import repartition
from hvdistill.train.schedule import build_scheduler, peak_lr

log = logging.getLogger(__name__)
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LOOPBACK = "127.0.0.1"
PLAIN = (int, float, str, bool, type(None))  # JSON/weights_only-safe leaves (exact types)


@dataclass
class DistContext:
    """This process's place in the run and who owns the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    created: bool  # init_distributed made the group (and shutdown_distributed destroys it)
    env_added: list[str] = field(default_factory=list)  # variables set for DeepSpeed, removed at shutdown

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _backend(cfg: Config) -> str:
    if cfg.dist.backend != "auto":
        return cfg.dist.backend
    return "nccl" if cfg.dist.use_gpu else "gloo"


def _device(cfg: Config, local_rank: int) -> torch.device:
    if not cfg.dist.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(["dist.use_gpu: true but torch sees no CUDA device; set dist.use_gpu=false"])
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(cfg: Config) -> DistContext:
    """Reuse, create from the launcher's environment, or create a 1-rank loopback gloo group."""
    added: list[str] = []
    created = False
    if not tdist.is_initialized():
        backend = _backend(cfg)
        if not all(k in os.environ for k in LAUNCH_ENV):
            single = {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": LOOPBACK,
                "MASTER_PORT": str(free_port()),
            }
            added = [k for k in single if k not in os.environ]
            os.environ.update({k: single[k] for k in added})
            backend = "gloo" if not cfg.dist.use_gpu else backend
        tdist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
        created = True
    rank, world = tdist.get_rank(), tdist.get_world_size()
    if "LOCAL_RANK" not in os.environ:  # DeepSpeed asserts it; Ray Train and torchrun set it
        os.environ["LOCAL_RANK"] = str(
            rank if world == 1 or not cfg.dist.use_gpu else rank % torch.cuda.device_count()
        )
        added.append("LOCAL_RANK")
    local_rank = int(os.environ["LOCAL_RANK"])
    ctx = DistContext(rank, world, local_rank, _device(cfg, local_rank), tdist.get_backend(), created, added)
    log.info(
        "rank %d of %d on %s (%s, group %s)",
        rank,
        world,
        ctx.device,
        ctx.backend,
        "created" if created else "reused",
    )
    return ctx


def shutdown_distributed(ctx: DistContext, clean: bool = True) -> None:
    """Barrier (when `clean`) and destroy the group if `init_distributed` created it; undo its env."""
    if ctx.created and tdist.is_initialized():
        if clean:
            tdist.barrier()
        ds_comm = sys.modules.get("deepspeed.comm.comm")
        if ds_comm is not None and ds_comm.cdb is not None:
            # DeepSpeed's own teardown also drops the groups it cached (world, data parallel, ...);
            # a later run in this process (tests, sweeps) then starts from a clean state
            ds_comm.destroy_process_group()
            ds_comm.cdb = None
        else:
            tdist.destroy_process_group()
    for key in ctx.env_added:
        os.environ.pop(key, None)


def batch_split(cfg: Config, world_size: int) -> tuple[int, int]:
    """(micro-batch per rank, gradient-accumulation steps) that make train.global_batch on
    `world_size` ranks: train.micro_batch when it fits, else the largest smaller micro-batch that
    does (an elastic group's size is only known at its start). A ConfigError listing the group
    sizes that work when the global batch does not split evenly over the ranks."""
    g, most = cfg.train.global_batch, cfg.train.micro_batch
    if g % world_size:
        fits = [w for w in range(1, g + 1) if g % w == 0]
        raise ConfigError(
            [
                f"train.global_batch: {g} samples cannot be split evenly over {world_size} ranks; group "
                f"sizes that can: {fits}; use one of them (dist.num_workers), or change train.global_batch"
            ]
        )
    per_rank = g // world_size
    micro = max(m for m in range(1, min(most, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def grad_accumulation(cfg: Config, world_size: int) -> int:
    """Gradient-accumulation steps for `world_size` ranks (see `batch_split`)."""
    return batch_split(cfg, world_size)[1]


def fit_batch_to_world(cfg: Config, world_size: int) -> Config:
    """`cfg` with train.micro_batch re-derived for `world_size` ranks when the configured one does
    not split the global batch there (logged); the global batch never changes."""
    micro, gas = batch_split(cfg, world_size)
    if micro == cfg.train.micro_batch:
        return cfg
    log.warning(
        "train.micro_batch %d does not split train.global_batch %d over %d ranks: micro-batch %d x %d "
        "accumulation steps instead",
        cfg.train.micro_batch,
        cfg.train.global_batch,
        world_size,
        micro,
        gas,
    )
    return replace(cfg, train=replace(cfg.train, micro_batch=micro))


def check_precision(cfg: Config, device: torch.device) -> None:
    """Refuse what cannot run here: float16 on CPU (DeepSpeed and CPU autocast have no fp16 path)."""
    if device.type == "cpu" and choose_image_dtype(cfg.precision, device).name == "float16":
        raise ConfigError(["precision.image_dtype: float16 is refused on CPU; use auto, bfloat16 or float32"])


def apply_tf32(cfg: Config, device: torch.device) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions on a CUDA device as `dist.allow_tf32` says
    (process-wide flags); nothing on CPU. The legacy flags are set: torch 2.13 refuses to read a
    legacy flag after the newer `fp32_precision` API has set it."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.dist.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.dist.allow_tf32


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config generated from ours (see the module docstring)."""
    micro, gas = batch_split(cfg, world_size)
    if cfg.dist.zero_stage == 3:
        raise ConfigError(
            [
                "dist.zero_stage: 3 is not supported: ZeRO-3 releases each parameter after its forward "
                "and spconv's sparse convolutions keep their weight tensors for the backward (their "
                "backward then fails on the released weight); use dist.zero_stage=2 (gradients and "
                "optimizer states partitioned; the trainable model is ~50M parameters at the paper size)"
            ]
        )
    zero: dict[str, Any] = {"stage": cfg.dist.zero_stage}
    if cfg.dist.zero_stage in (1, 2):
        # each rank's partition as it is ("rigid"): exact at the same world size; another world size
        # is re-partitioned from all of them when loading (hvdistill/train/partitions.py)
        zero["elastic_checkpoint"] = False
        # gradients reduced in buckets while the backward runs (docs/training.md, "Communication");
        # ZeRO-0 reduces through DeepSpeed's own fixed-size buffers and takes none of these
        zero["overlap_comm"] = cfg.dist.overlap_comm
        zero["contiguous_gradients"] = cfg.dist.contiguous_gradients
        zero["reduce_bucket_size"] = cfg.dist.reduce_bucket_size
        zero["allgather_bucket_size"] = cfg.dist.allgather_bucket_size
    return {
        "train_batch_size": cfg.train.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the client torch optimizer under ZeRO
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The client torch optimizer over the distiller's parameter groups, at the scaled peak rate."""
    o = cfg.optim
    groups = [{"params": g.params, "name": g.name} for g in model.parameter_groups() if g.params]
    lr = peak_lr(o, cfg.train.global_batch)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(
        groups, lr=lr, momentum=o.momentum, dampening=o.dampening, weight_decay=o.weight_decay
    )


def import_deepspeed(device_type: str) -> Any:
    """`import deepspeed` for this device type: its accelerator named (no probing, no warning), its
    INFO logging quieted, and on CPU the shared-memory comm op switched off before any initialize."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device_type == "cuda" else "cpu")
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if device_type == "cpu":
        _skip_cpu_shm_comm()
    return deepspeed


def _skip_cpu_shm_comm() -> None:
    """Never JIT-build the shared-memory comm op: training never calls inference_all_reduce."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def plain_state(state: Any) -> Any:
    """`state` without anything `torch.load(weights_only=True)` would refuse (objects, enums);
    dropped dict entries are restored from the live optimizer when loading."""
    if isinstance(state, torch.Tensor) or type(state) in PLAIN:
        return state
    if isinstance(state, dict):
        kept = {k: plain_state(v) for k, v in state.items() if type(k) in PLAIN}
        return {k: v for k, v in kept.items() if v is not _DROP}
    if isinstance(state, list | tuple):
        items = [plain_state(v) for v in state]
        return _DROP if any(v is _DROP for v in items) else type(state)(items)
    return _DROP


_DROP = object()


class Engine:
    """The DeepSpeed engine with our backward rule, step accounting and grad-norm report."""

    def __init__(self, ds_engine: Any, ctx: DistContext, cfg: Config):
        self.ds, self.ctx, self.zero_stage = ds_engine, ctx, cfg.dist.zero_stage
        self.last_grad_norm = float("nan")
        self._pending_norm: float | None = None

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps)

    @property
    def gradient_accumulation_steps(self) -> int:
        return int(self.ds.gradient_accumulation_steps())

    def forward(self, batch: Batch, with_bev: bool) -> LossInputs:
        return self.ds(batch, with_bev=with_bev)

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def lr(self) -> float:
        return float(self.ds.optimizer.param_groups[0]["lr"])

    def backward(self, total: torch.Tensor) -> None:
        """Back-propagate world_size x the per-rank share (DeepSpeed averages over ranks, / GAS)."""
        at_boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.backward(self.ctx.world_size * total)
        if at_boundary and self.zero_stage == 0:
            grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
            self._pending_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0

    def step(self) -> bool:
        """Advance one micro-step; True when an optimizer step was applied (accumulation boundary)."""
        before = self.global_steps
        self.ds.step()
        if self.global_steps == before:
            return False
        norm = self.ds.get_global_grad_norm() if self.zero_stage > 0 else self._pending_norm
        self.last_grad_norm = float("nan") if norm is None else float(norm)
        return True

    # ---- state for checkpoints (plain tensors and numbers only) ----
    def optimizer_state(self) -> dict[str, Any]:
        """This rank's optimizer state (ZeRO: its partition) without unpicklable entries."""
        return plain_state(self.ds.optimizer.state_dict())

    def load_optimizer_state(self, states: list[dict[str, Any] | None]) -> None:
        """ZeRO-0: `states` is [the whole optimizer state]. ZeRO-1/2: every saved rank's partition, in
        rank order, however many ranks saved them: this rank's own at the same world size (exact;
        the other entries are not read and may be None), else its share of all of them re-cut for
        the current ranks (hvdistill/train/partitions.py)."""
        live = self.ds.optimizer.state_dict()
        if self.zero_stage == 0:
            self.ds.optimizer.load_state_dict({**live, **states[0]})
            return
        rank, opt = self.ctx.rank, self.ds.optimizer
        if len(states) == self.ctx.world_size:
            own = states[rank]
        else:  # saved by another number of ranks: this rank's share of all of them
            own = repartition(states, rank, [g.numel() for g in opt.single_partition_of_fp32_groups], live)
        merged = [{**live, **own} if r == rank else None for r in range(self.ctx.world_size)]
        opt.load_state_dict(merged, load_optimizer_states=True, load_from_fp32_weights=True)

    def counters(self) -> dict[str, int]:
        d = self.ds
        return {
            "global_steps": int(d.global_steps),
            "global_samples": int(d.global_samples),
            "micro_steps": int(d.micro_steps),
            "skipped_steps": int(d.skipped_steps),
        }

    def load_counters(self, counters: dict[str, int]) -> None:
        for key, value in counters.items():
            setattr(self.ds, key, int(value))

    def scheduler_state(self) -> dict[str, Any]:
        return plain_state(self.ds.lr_scheduler.state_dict())

    def load_scheduler_state(self, state: dict[str, Any]) -> None:
        self.ds.lr_scheduler.load_state_dict({**self.ds.lr_scheduler.state_dict(), **state})


def prepare_model(model: nn.Module, cfg: Config, ctx: DistContext) -> nn.Module:
    """SyncBatchNorm on GPU with several ranks, before the engine wraps the model (torch has no
    CPU SyncBatchNorm: on CPU the BatchNorm statistics stay per rank)."""
    if cfg.dist.sync_batchnorm and ctx.world_size > 1:
        if ctx.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trainable BNs; the teacher is no child
        if ctx.is_main:
            log.warning("dist.sync_batchnorm: no SyncBatchNorm on CPU; BatchNorm statistics stay per rank")
    return model


def build_engine(model: nn.Module, cfg: Config, ctx: DistContext, total_steps: int) -> Engine:
    """deepspeed.initialize over the distiller with the client optimizer and LR schedule."""
    check_precision(cfg, ctx.device)
    apply_tf32(cfg, ctx.device)
    deepspeed = import_deepspeed(ctx.device.type)
    model = prepare_model(model, cfg, ctx).to(ctx.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, ctx.world_size),
        dist_init_required=False,
    )
    return Engine(ds_engine, ctx, cfg)
