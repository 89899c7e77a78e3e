"""The pretraining loop: `train(job)` reads top to bottom; the pieces it calls sit below it.

Per micro-batch: forward + loss (under the image-side autocast), then ONE collective, an
all_reduce of [non-finite flag, total, ipv, depth, bev]: it gives every rank the same verdict and
the global loss values (the per-rank shares summed). A non-finite micro-batch is skipped by every
rank together (no backward, no engine step; the BN statistics and the loss's key queues it
touched are put back), so no rank waits in a collective the others skipped; past
`train.max_nonfinite_steps` skipped micro-batches every rank raises `NonFiniteLossError`
(step and terms). Otherwise: backward of world_size x the share and an engine step (an optimizer
step at the accumulation boundary). Reading the verdict is the loop's one host sync per
micro-batch (the engine also reads the gradient norm once per optimizer step); the loss values
are summed on the device (`Meter`) and reach the host once per logging interval.

Per optimizer step, every `train.log_every` steps: the loss terms (mean over the window),
`lr`, `grad_norm`, `samples_per_s`, `data_wait_fraction` (time blocked on the DataLoader / wall
time: the mean over ranks, and `/max`), the window's peak memory (max over ranks, and `/mean`)
and `data/share/<dataset>` (each dataset's fraction of the window's samples over all ranks:
hvdistill/train/dataset_shares.py) to the tracker and `hooks.on_log`. Rank 0's tracker calls go
through a bounded background queue (hvdistill/train/metrics_sink.py), so a slow tracking server
never stalls training; the queue is flushed at checkpoints and at the end. Every
`train.eval_every` steps (0 = each epoch's end) the held-out loss on the val shards
(`val/loss/*`); every `train.checkpoint_every` steps and at the end a checkpoint
(hvdistill/train/checkpoint.py).
Evaluation leaves the training RNG streams as they were, so a run resumed from a checkpoint
continues exactly like one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hvdistill import dist
from hvdistill.batch import Batch
from hvdistill.config import Config
from hvdistill.losses.total import HybridViewLoss
from hvdistill.train.checkpoint import save_checkpoint, stage_checkpoint
from hvdistill.train.data import BatchStream, close_loader
from hvdistill.train.dataset_shares import DatasetShares
from hvdistill.train.engine import DistContext, Engine
from hvdistill.train.metrics_sink import MetricsSink, open_sink

log = logging.getLogger(__name__)
TERMS = ("total", "ipv", "depth", "bev")
METRICS_FILE = "metrics.jsonl"  # every published metrics dict, one JSON line each (rank 0)
PROC_STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")  # Linux
RESET_PEAK_RSS = "5"  # written to clear_refs: VmHWM (peak RSS) := current RSS (Linux >= 4.0)


class NonFiniteLossError(RuntimeError):
    """More non-finite micro-batches than `train.max_nonfinite_steps`; raised on every rank at once."""

    def __init__(self, step: int, terms: dict[str, float], count: int, limit: int):
        self.step, self.terms, self.count, self.limit = step, terms, count, limit
        shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
        super().__init__(
            f"non-finite loss at step {step} ({shown}): {count} non-finite micro-batches, more than "
            f"train.max_nonfinite_steps={limit}; lower optim.lr, set optim.grad_clip, or check the data"
        )


@dataclass
class LoopState:
    """Where training stands (saved in every checkpoint)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` this rank consumed (skipped ones included)
    nonfinite: int = 0  # micro-batches skipped for a non-finite loss so far


@dataclass
class TrainJob:
    """Everything the loop uses, built by hvdistill/train/run.py."""

    cfg: Config
    ctx: DistContext
    engine: Engine
    loss_fn: HybridViewLoss
    train_data: BatchStream
    train_loader: Iterator[Batch] | Any
    val_loader: Any | None
    run_dir: Path
    total_steps: int
    micro_per_epoch: int
    image_dtype: torch.dtype
    tracker: Any  # hvdistill.tracking.Tracker (log_metrics)
    on_log: Callable[[int, dict[str, float]], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # constant checkpoint metadata
    state: LoopState = field(default_factory=LoopState)
    last_checkpoint: int = -1
    staged: bool = False  # checkpoints staged per rank for the launcher (Ray storage), not in run_dir
    sink: MetricsSink | None = None  # rank 0's queue in front of the tracker, open while `train` runs


def train(job: TrainJob) -> dict[str, float]:
    """Train until `job.total_steps` optimizer steps; returns the last logged metrics."""
    cfg, engine, state, device = job.cfg, job.engine, job.state, job.ctx.device
    shares = DatasetShares(job.train_data.reader)
    job.tracker.log_params(shares.configured())  # rank 0's tracker; a resumed run keeps its params
    meter = Meter(job.ctx.world_size * cfg.train.micro_batch, device, shares)
    last, bar = {}, _progress_bar(job)
    engine.train()
    with metrics_sink(job):  # rank 0's tracker calls from a background queue, flushed at the end
        while state.step < job.total_steps:
            job.train_data.set_epoch(state.epoch, state.batches_done)
            batches = iter(job.train_loader)
            while state.batches_done < job.micro_per_epoch and state.step < job.total_steps:
                with meter.waiting():
                    batch = next(batches, None)
                if batch is None:
                    raise RuntimeError(
                        f"the train reader ended after {state.batches_done} of {job.micro_per_epoch} "
                        f"micro-batches of epoch {state.epoch}; see the reader's warnings above"
                    )
                batch = batch.to(device, non_blocking=device.type == "cuda")  # pinned on CUDA
                state.batches_done += 1
                lr = engine.lr()
                values, stepped = micro_step(job, batch)
                meter.micro_batch(values)
                if not stepped:
                    continue
                state.step += 1
                meter.step(lr, engine.last_grad_norm)
                bar.update(1)
                if state.step % cfg.train.log_every == 0 or state.step == job.total_steps:
                    last = publish(job, meter.flush(), bar)  # every rank: flush is a collective
                with meter.paused():  # evaluation and checkpoints are not training throughput
                    if cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
                        last = {**last, **publish(job, evaluate(job))}
                    if state.step % cfg.train.checkpoint_every == 0:
                        checkpoint(job)
            if state.batches_done >= job.micro_per_epoch:  # the epoch is complete
                state.epoch, state.batches_done = state.epoch + 1, 0
                if not cfg.train.eval_every:
                    with meter.paused():
                        last = {**last, **publish(job, evaluate(job))}
        if job.last_checkpoint != state.step:
            checkpoint(job)
    bar.close()
    return last


def _progress_bar(job: TrainJob) -> tqdm:
    """Rank 0's live progress bar (`train.progress`); a disabled one elsewhere."""
    return tqdm(
        total=job.total_steps,
        initial=job.state.step,
        unit="step",
        desc="pretrain",
        disable=not (job.ctx.is_main and job.cfg.train.progress),
    )


@contextlib.contextmanager
def metrics_sink(job: TrainJob):
    """`job.sink` open on rank 0 while the block runs, then flushed (at most `tracking.flush_timeout`
    seconds) and closed, also when the block raises."""
    job.sink = open_sink(job.tracker, job.cfg.tracking.metrics_queue, job.ctx.is_main)
    try:
        yield job.sink
    finally:
        if job.sink is not None:
            job.sink.close(job.cfg.tracking.flush_timeout)
        job.sink = None


def micro_step(job: TrainJob, batch: Batch) -> tuple[torch.Tensor, bool]:
    """Forward, one all_reduce to agree on finiteness, then backward + engine step unless skipped.

    Returns the global [total, ipv, depth, bev] (on the device) and whether an optimizer step was
    applied. Reading the verdict is the micro-batch's one host sync: whether to run the backward
    must be known on the host, and the same on every rank.
    """
    engine, loss_fn, state = job.engine, job.loss_fn, job.state
    saved = _buffers(job)
    with _autocast(job):
        inputs = engine.forward(batch, with_bev=loss_fn.bev_active(state.epoch))
        terms = loss_fn(inputs, epoch=state.epoch)
    local = torch.stack([getattr(terms, k).detach().float() for k in TERMS])  # (4,) this rank's shares
    flag = (~torch.isfinite(local)).any().float().reshape(1)
    agreed = dist.all_reduce_sum(torch.cat([flag, local]))  # (5,) the ONE collective: verdict + values
    if bool(agreed[0] > 0):  # the ONE host sync
        _restore(job, saved)
        state.nonfinite += 1
        mine = {f"loss/{k}": float(v) for k, v in zip(TERMS, local)}
        log.warning("step %d: non-finite loss (this rank: %s); skipped on every rank", state.step, mine)
        if state.nonfinite > job.cfg.train.max_nonfinite_steps:
            everyone = {f"loss/{k}": float(v) for k, v in zip(TERMS, agreed[1:])}
            raise NonFiniteLossError(state.step, everyone, state.nonfinite, job.cfg.train.max_nonfinite_steps)
        return agreed[1:], False
    engine.backward(terms.total)
    return agreed[1:], engine.step()


def evaluate(job: TrainJob) -> dict[str, float]:
    """The held-out loss on the val shards: the mean over global micro-batches of the summed shares."""
    if job.val_loader is None:
        return {}
    engine, loss_fn, limit = job.engine, job.loss_fn, job.cfg.train.eval_batches
    engine.train(False)
    loss_fn.eval()
    sums, batches = torch.zeros(len(TERMS), dtype=torch.float64, device=job.ctx.device), 0  # (4,)
    job.val_loader.dataset.set_epoch(0)  # the same val order at every evaluation
    epoch, val_batches = job.state.epoch, iter(job.val_loader)
    try:
        with torch.no_grad(), _preserved_rng(loss_fn), _autocast(job):
            for batch in val_batches:
                if limit and batches >= limit:
                    break
                inputs = engine.forward(batch.to(job.ctx.device), with_bev=loss_fn.bev_active(epoch))
                terms = loss_fn(inputs, epoch=epoch)
                sums += torch.stack([getattr(terms, k).detach().double() for k in TERMS])  # no host sync
                batches += 1
    finally:
        close_loader(val_batches)
    totals = dist.all_reduce_sum(sums).cpu() / max(batches, 1)  # equal counts on all ranks
    engine.train()
    loss_fn.train()
    return {f"val/loss/{k}": float(v) for k, v in zip(TERMS, totals)}


def publish(job: TrainJob, metrics: dict[str, float], bar: tqdm | None = None) -> dict[str, float]:
    """Metrics at the current step to the tracker (rank 0's is real), `on_log` and the progress bar."""
    if not metrics:
        return {}
    step = job.state.step
    (job.sink if job.sink is not None else job.tracker).log_metrics(metrics, step=step)
    if job.ctx.is_main:  # also a plain record beside the checkpoints, readable without MLflow
        with open(job.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    if job.on_log is not None:
        job.on_log(step, metrics)
    if bar is not None and "loss/total" in metrics:
        bar.set_postfix(loss=f"{metrics['loss/total']:.4f}", lr=f"{metrics['lr']:.3g}")
    if job.ctx.is_main:  # losses are all-reduced already: one line per step, not one per rank
        log.info("step %d: %s", step, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics


def checkpoint(job: TrainJob) -> Path:
    """Save the current state (a collective); the data position is normalised to the next batch."""
    state = job.state
    epoch, done = state.epoch, state.batches_done
    if done >= job.micro_per_epoch:
        epoch, done = epoch + 1, 0
    meta = {
        **job.meta,
        "epoch": epoch,
        "batches_done": done,
        "nonfinite": state.nonfinite,
        "data": job.train_data.position(epoch, done),
    }
    if job.staged:
        path = stage_checkpoint(job.run_dir, state.step, job.engine, job.loss_fn, meta)
    else:
        path = save_checkpoint(
            job.run_dir, state.step, job.engine, job.loss_fn, meta, job.cfg.train.keep_checkpoints
        )
    job.last_checkpoint = state.step
    if job.sink is not None:  # the tracking run holds every step up to the checkpoint
        job.sink.flush(job.cfg.tracking.flush_timeout)
    if job.on_checkpoint is not None:
        job.on_checkpoint(state.step, path)
    return path


class Meter:
    """Loss terms, time, data wait and peak memory over the steps since the last log.

    The loss terms are summed on the device (no host sync per micro-batch); `flush` reads them
    once and exchanges every rank's data wait, peak memory and samples per dataset (`shares`) in
    one collective.
    """

    def __init__(
        self, samples_per_micro: int, device: torch.device | str = "cpu", shares: DatasetShares | None = None
    ):
        self.samples_per_micro, self.device, self.shares = samples_per_micro, torch.device(device), shares
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(len(TERMS), dtype=torch.float64, device=self.device)  # (4,) finite ones
        self.finite = torch.zeros((), dtype=torch.float64, device=self.device)  # finite micro-batches
        self.micro, self.wait, self.excluded = 0, 0.0, 0.0
        self.lr, self.grad_norm, self.start = float("nan"), float("nan"), time.perf_counter()

    @contextlib.contextmanager
    def waiting(self):
        """Time blocked on the DataLoader."""
        tic = time.perf_counter()
        yield
        self.wait += time.perf_counter() - tic

    @contextlib.contextmanager
    def paused(self):
        """Time left out of the window (evaluation, checkpoints)."""
        tic = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - tic

    def micro_batch(self, values: torch.Tensor) -> None:
        """Add the global terms (4,) of a micro-batch; a skipped (non-finite) one counts in time only."""
        finite = torch.isfinite(values).all()  # stays on the device
        self.sums += torch.where(finite, values.double(), 0.0)
        self.finite += finite
        self.micro += 1

    def step(self, lr: float, grad_norm: float) -> None:
        self.lr, self.grad_norm = lr, grad_norm

    def flush(self) -> dict[str, float]:
        """The window's metrics, then a new window. A collective: every rank flushes at the same steps."""
        elapsed = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        *sums, finite = torch.cat([self.sums, self.finite[None]]).tolist()  # the window's one host sync
        out = {f"loss/{k}": s / finite if finite else float("nan") for k, s in zip(TERMS, sums)}
        out.update(
            lr=self.lr,
            grad_norm=self.grad_norm,
            samples_per_s=self.micro * self.samples_per_micro / elapsed,
        )
        memory_key, peak = peak_memory_mb(self.device)
        counts = self.shares.window() if self.shares is not None else torch.zeros(0, dtype=torch.float64)
        mine = torch.cat([torch.tensor([self.wait / elapsed, peak], dtype=torch.float64), counts])
        gathered = dist.all_gather_equal(mine.to(self.device)).cpu()  # (W, 2 + D + 1): one collective
        waits, peaks = gathered[:, :2].t().tolist()
        out.update(
            {
                "data_wait_fraction": sum(waits) / len(waits),
                "data_wait_fraction/max": max(waits),
                memory_key: max(peaks),
                f"{memory_key}/mean": sum(peaks) / len(peaks),
            }
        )
        if self.shares is not None:  # summed over ranks
            out.update(self.shares.metrics(gathered[:, 2:].sum(0).tolist()))
        self._reset()
        return {k: v for k, v in out.items() if not math.isnan(v)}


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    """(metric name, MiB) this process's peak memory since the previous call, which starts anew.

    CUDA: `memory/peak_mb`, tensors allocated on the device (max_memory_allocated, then
    reset_peak_memory_stats). CPU: `memory/peak_rss_mb`, the process's peak resident set (Linux
    VmHWM, reset through /proc/self/clear_refs); where that file is missing or refused, the peak
    since the process started (getrusage). DataLoader workers are processes of their own.
    """
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return "memory/peak_mb", peak
    try:
        status = PROC_STATUS.read_text().splitlines()
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except (OSError, StopIteration, ValueError):
        per_mb = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb
    return "memory/peak_rss_mb", peak


def _autocast(job: TrainJob) -> contextlib.AbstractContextManager:
    """The image dtype's autocast around forward + loss (the sparse side and logits stay fp32 inside)."""
    dtype = job.image_dtype
    return torch.autocast(job.ctx.device.type, dtype=dtype, enabled=dtype != torch.float32)


def _buffers(job: TrainJob) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """What a forward changes besides the graph: module buffers (BN statistics, updated in place:
    copied) and the loss's buffers (key queues, replaced by new tensors: referenced)."""
    return [b.detach().clone() for b in job.engine.module.buffers()], dict(job.loss_fn.state_dict())


def _restore(job: TrainJob, saved: tuple[list[torch.Tensor], dict[str, torch.Tensor]]) -> None:
    module_buffers, loss_state = saved
    with torch.no_grad():
        for buffer, before in zip(job.engine.module.buffers(), module_buffers):
            buffer.copy_(before)
    job.loss_fn.load_state_dict(loss_state)


@contextlib.contextmanager
def _preserved_rng(loss_fn: HybridViewLoss):
    """Evaluation draws nothing from the training streams (torch global, CUDA, the loss's generator)."""
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    had_generator = loss_fn.generator is not None
    generator = loss_fn.generator.get_state() if had_generator else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        if had_generator:
            loss_fn.generator.set_state(generator)
        else:
            loss_fn.generator = None  # seeded at its first training use, as without the evaluation
