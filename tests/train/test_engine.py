"""The engine's backward rule: 2 gloo ranks with half the batch each train like one process with all of it.

Both runs see the same samples with the same augmentation (rank r of 2 takes sample 2s + r at
step s; one process takes both), and start from the same weights. BatchNorm and dropout are in
eval mode: torch has no SyncBatchNorm on CPU, so per-rank batch statistics would differ from
the single process's by design; with them fixed the test isolates what the engine owns (the
loss's per-rank shares x world size, DeepSpeed's gradient averaging, ZeRO's partitioned step).
The image side is forced to fp32 (`auto` may pick bf16 on this CPU). Tolerance: per tensor,
the runs differ by at most 1% of the largest change the training made to it, and by 1e-6
absolutely (fp32 sums reduced in a different order: ~0.07% of the update was measured; a wrong
loss normalisation, e.g. gradients halved, is off by 30% or more).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hvdistill.config import ConfigError
from hvdistill.models.distiller import build_distiller
from hvdistill.train.engine import build_engine, fit_batch_to_world, init_distributed, shutdown_distributed
from tests.helpers.gloo import free_port
from tests.train.helpers import rank_env, spawn_ranks, tiny_train_config

STEPS = 3
STAGES = (0, 2)


def _samples(cfg):
    from hvdistill.data.shards import build_shard_dataset

    data = replace(cfg.data, resampled=False)
    return list(build_shard_dataset(data, rank=0, world_size=1, seed=0))


def _engine_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    from hvdistill.losses.total import build_hybrid_view_loss

    rank_env(rank, world, port)
    torch.set_num_threads(1)
    cfg = tiny_train_config(
        Path(shards),
        f"train.micro_batch={2 // world}",
        "train.global_batch=2",
        "precision.image_dtype=float32",
    )
    ctx = init_distributed(cfg)
    samples = _samples(cfg)
    per_rank = 2 // world
    for stage in STAGES:
        cfg.dist.zero_stage = stage
        torch.manual_seed(0)
        model, loss_fn = build_distiller(cfg, "cpu"), build_hybrid_view_loss(cfg)
        engine = build_engine(model, cfg, ctx, total_steps=STEPS)
        engine.train(False)
        initial = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
        norms = []
        for step in range(STEPS):
            mine = [2 * step + rank * per_rank + i for i in range(per_rank)]
            terms = loss_fn(engine.forward(_batch(samples, mine, cfg), with_bev=True), epoch=0)
            engine.backward(terms.total)
            assert engine.step(), "global_batch = micro x world: every micro-step is an optimizer step"
            norms.append(engine.last_grad_norm)
        params = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
        torch.save(
            {"params": params, "initial": initial, "norms": torch.tensor(norms)},
            Path(out) / f"w{world}-z{stage}-r{rank}.pt",
        )
    shutdown_distributed(ctx)


def _close(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor) -> bool:
    """a and b agree to 1% of the change b made from `initial` (and to 1e-6 absolutely)."""
    diff, update = float((a - b).abs().max()), float((b - initial).abs().max())
    return diff <= 1e-6 and diff <= 0.01 * update + 1e-9


def _batch(samples, indices, cfg):
    from hvdistill.data.augment import augment_sample
    from hvdistill.data.collate import collate

    rngs = [np.random.default_rng(i) for i in indices]
    return collate(
        [augment_sample(samples[i], cfg.augment, cfg.geometry, g) for i, g in zip(indices, rngs)],
        cfg.geometry,
    )


def _accumulation_worker(port: int, shards: str, out: str) -> None:
    """One optimizer step over 2 accumulated micro-batches, by DeepSpeed and by hand."""
    from hvdistill.losses.total import build_hybrid_view_loss
    from hvdistill.train.engine import build_optimizer

    rank_env(0, 1, port)
    torch.set_num_threads(1)
    cfg = tiny_train_config(
        Path(shards), "train.micro_batch=1", "train.global_batch=2", "precision.image_dtype=float32"
    )
    ctx = init_distributed(cfg)
    samples, loss_fn = _samples(cfg), build_hybrid_view_loss(cfg)
    torch.manual_seed(0)
    engine = build_engine(build_distiller(cfg, "cpu"), cfg, ctx, total_steps=1)
    engine.train(False)
    stepped = []
    for i in (0, 1):
        engine.backward(loss_fn(engine.forward(_batch(samples, [i], cfg), with_bev=True), epoch=0).total)
        stepped.append(engine.step())
    torch.manual_seed(0)
    model = build_distiller(cfg, "cpu")
    model.train(False)
    optimizer = build_optimizer(model, cfg)  # the peak rate: the schedule's factor of step 0 of 1 is 1
    for i in (0, 1):
        loss_fn(model(_batch(samples, [i], cfg), with_bev=True), epoch=0).total.backward()
    for p in model.parameters():
        if p.grad is not None:
            p.grad /= 2  # the mean over the accumulation window
    optimizer.step()
    ours = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    torch.save(
        {"stepped": torch.tensor(stepped), "engine": ours, "manual": dict(model.named_parameters())},
        Path(out) / "accumulation.pt",
    )
    shutdown_distributed(ctx)


def _processes(i: int, _: int, port: int, single_port: int, gas_port: int, shards: str, out: str) -> None:
    """0 and 1: the ranks of a 2-rank group; 2: one process alone; 3: the accumulation check."""
    if i < 2:
        _engine_worker(i, 2, port, shards, out)
    elif i == 2:
        _engine_worker(0, 1, single_port, shards, out)
    else:
        _accumulation_worker(gas_port, shards, out)


@pytest.fixture(scope="module")
def engine_runs(train_shards, tmp_path_factory, forkable) -> Path:
    """The four processes of `_processes`, run once for this module's tests; their output directory."""
    out = tmp_path_factory.mktemp("engine")
    ports = (free_port(), free_port())
    spawn_ranks(_processes, 4, (*ports, str(train_shards), str(out)), timeout=300)
    return out


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_two_ranks_match_one_process_zero0_and_zero2(engine_runs):
    load = lambda name: torch.load(engine_runs / name, weights_only=True)  # noqa: E731
    for stage in STAGES:
        one, r0, r1 = (load(f"w{w}-z{stage}-r{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
        for name, p in one["params"].items():
            assert torch.equal(r0["initial"][name], one["initial"][name]), f"different start for {name}"
            assert torch.equal(r0["params"][name], r1["params"][name]), f"ranks disagree on {name}"
            assert _close(r0["params"][name], p, one["initial"][name]), (
                f"ZeRO-{stage}: {name} differs by {(r0['params'][name] - p).abs().max():.3g}, "
                f"its update was {(p - one['initial'][name]).abs().max():.3g}"
            )
        assert torch.isfinite(one["norms"]).all() and (one["norms"] > 0).all()
        assert torch.allclose(r0["norms"], one["norms"], rtol=1e-5), (r0["norms"], one["norms"])
    moved = load("w1-z0-r0.pt")
    assert any(not torch.equal(moved["params"][n], moved["initial"][n]) for n in moved["params"])


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_accumulated_micro_batches_average_their_gradients(engine_runs):
    """DeepSpeed divides by the accumulation steps itself: 2 micro-batches give their mean gradient."""
    result = torch.load(engine_runs / "accumulation.pt", weights_only=True)
    assert result["stepped"].tolist() == [False, True]
    for name, p in result["manual"].items():
        assert torch.allclose(result["engine"][name], p, rtol=0, atol=1e-6), name


def test_global_batch_must_split_into_ranks_and_micro_batches(train_shards):
    from hvdistill.train.engine import deepspeed_config

    cfg = tiny_train_config(train_shards, "train.global_batch=6", "train.micro_batch=2")
    ds = deepspeed_config(cfg, world_size=3)
    assert ds["gradient_accumulation_steps"] == 1 and ds["train_micro_batch_size_per_gpu"] == 2
    assert deepspeed_config(cfg, world_size=1)["gradient_accumulation_steps"] == 3
    assert "optimizer" not in ds and "scheduler" not in ds and not ds["bf16"]["enabled"]
    split = deepspeed_config(cfg, world_size=2)  # 3 per rank: micro-batch 2 cannot, 1 can
    assert split["train_micro_batch_size_per_gpu"] == 1 and split["gradient_accumulation_steps"] == 3
    assert fit_batch_to_world(cfg, 2).train.micro_batch == 1 and fit_batch_to_world(cfg, 3) is cfg
    with pytest.raises(ConfigError, match=r"6 samples cannot be split evenly over 4 ranks.*\[1, 2, 3, 6\]"):
        deepspeed_config(cfg, world_size=4)
    cfg.dist.zero_stage = 3
    with pytest.raises(ConfigError, match="dist.zero_stage: 3 is not supported"):
        deepspeed_config(cfg, world_size=3)


def test_float16_is_refused_on_cpu(train_shards):
    from hvdistill.train.engine import check_precision

    cfg = tiny_train_config(train_shards, "precision.image_dtype=float16")
    with pytest.raises(ConfigError, match="float16 is refused on CPU"):
        check_precision(cfg, torch.device("cpu"))
    check_precision(tiny_train_config(train_shards, "precision.image_dtype=float32"), torch.device("cpu"))


def test_saved_zero_partitions_are_recut_for_another_world_size_without_changing_their_concatenation():
    from hvdistill.train.partitions import BASE_OPTIMIZER_STATE, FP32_PARTITIONS, GROUP_PADDINGS, repartition

    lengths = [(5, 3), (4, 2)]  # elements of two groups on each of 2 saving ranks; the last is padded
    saved = []
    for rank, sizes in enumerate(lengths):
        start = 1000 * rank
        fp32 = [
            torch.arange(start + 100 * g, start + 100 * g + n, dtype=torch.float32)
            for g, n in enumerate(sizes)
        ]
        momentum = {
            g: {"momentum_buffer": torch.cat([-w, torch.zeros(5 - w.numel())])} for g, w in enumerate(fp32)
        }
        base = {"state": momentum, "param_groups": [{"lr": 0.5}, {"lr": 0.5}]}
        saved.append(
            {FP32_PARTITIONS: fp32, BASE_OPTIMIZER_STATE: base, GROUP_PADDINGS: [0, 0], "ds_version": "x"}
        )
    whole = [torch.cat([s[FP32_PARTITIONS][g] for s in saved]) for g in range(2)]  # (9,) and (5,)
    for world in (1, 2, 3, 4):
        sizes = [-(-w.numel() // world) for w in whole]  # the live engine's partition sizes
        live = {BASE_OPTIMIZER_STATE: {"state": {}, "param_groups": [{"lr": 9.0}]}, GROUP_PADDINGS: [7, 7]}
        parts = [repartition(saved, r, sizes, live) for r in range(world)]
        for g in range(2):
            assert torch.equal(torch.cat([p[FP32_PARTITIONS][g] for p in parts]), whole[g])
            momentum = torch.cat([p[BASE_OPTIMIZER_STATE]["state"][g]["momentum_buffer"] for p in parts])
            assert torch.equal(momentum[: whole[g].numel()], -whole[g])  # then zero padding only
            assert not momentum[whole[g].numel() :].any()
            assert all(
                p[BASE_OPTIMIZER_STATE]["state"][g]["momentum_buffer"].numel() == sizes[g] for p in parts
            )
        assert all(p[GROUP_PADDINGS] == [7, 7] and p["ds_version"] == "x" for p in parts)  # the live layout
        assert parts[0][BASE_OPTIMIZER_STATE]["param_groups"] == [{"lr": 9.0}]
