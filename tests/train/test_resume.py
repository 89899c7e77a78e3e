"""Exact resume: K steps straight equal K/2 steps, a crash, and K/2 more resumed from the checkpoint.

Everything that carries state across steps is exercised: gradient accumulation (2 micro-batches
per step), random augmentation (seeded per batch), dropout (the torch RNG), BEV-anchor
subsampling (the loss's generator), a key queue (loss buffers), SGD momentum, the cosine LR,
BatchNorm statistics, a DataLoader worker resuming mid-epoch, and an evaluation between the
checkpoint and the end (it must not disturb the training RNG streams). ZeRO-0 in `make test`, ZeRO-2
(its partitioned optimizer state, saved per rank) marked slow. fp32, deterministic
algorithms, one torch thread: the resumed parameters must be bitwise equal (tolerance 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hvdistill.train.run import RunHooks, run
from tests.train.helpers import Crash, exact_resume_config

K = 4


def _config(shards: Path, out: Path, name: str, zero: int):
    return exact_resume_config(shards, out, name, zero, K)


def _crash_at(step: int):
    def on_checkpoint(done: int, path: Path) -> None:
        if done == step:
            raise Crash(f"stopped after the checkpoint of step {done}")

    return on_checkpoint


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = run_dir / f"checkpoints/step-{K:06d}"
    state = dict(torch.load(ckpt / "model.pt", weights_only=True))
    rank = torch.load(ckpt / "rank-00000.pt", weights_only=True)
    state.update({f"loss.{k}": v for k, v in rank["loss"]["buffers"].items()})
    for i, s in rank["optimizer"].get("state", {}).items():
        state.update({f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    for i, part in enumerate(rank["optimizer"].get("single_partition_of_fp32_groups", [])):
        state[f"fp32.{i}"] = part
    return state


@pytest.mark.parametrize("zero", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resumed_run_equals_the_straight_run(train_shards, tmp_path, zero):
    straight = run(_config(train_shards, tmp_path, "straight", zero))
    with pytest.raises(Crash):
        run(_config(train_shards, tmp_path, "resumed", zero), RunHooks(on_checkpoint=_crash_at(K // 2)))
    logged: list[int] = []
    hooks = RunHooks(on_log=lambda step, metrics: logged.append(step) if "loss/total" in metrics else None)
    resumed = run(_config(train_shards, tmp_path, "resumed", zero), hooks)
    assert straight.steps == resumed.steps == K
    assert logged == list(range(K // 2 + 1, K + 1)), "the resumed run starts after its checkpoint"
    a, b = _final_state(straight.run_dir), _final_state(resumed.run_dir)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:5]}"

    from hvdistill.tracking import metric_history, run_record

    record = json.loads((resumed.run_dir / "tracking.json").read_text())
    assert record["run_id"] == resumed.tracking_run_id  # one MLflow run across the crash
    steps = [s for s, _ in metric_history(record["uri"], record["run_id"], "loss/total")]
    assert steps == list(range(1, K + 1))
    assert run_record(record["uri"], record["run_id"])["status"] == "FINISHED"


def _two_rank_worker(rank: int, world: int, port: int, ports: list[int], shards: str, out: str) -> None:
    from tests.train.helpers import rank_env

    torch.set_num_threads(1)
    for i, (name, hooks) in enumerate(
        [("straight", None), ("resumed", RunHooks(on_checkpoint=_crash_at(K // 2))), ("resumed", None)]
    ):
        rank_env(rank, world, [port, *ports][i])
        try:
            run(_config(Path(shards), Path(out), name, 2), hooks)
        except Crash:
            assert i == 1


@pytest.mark.slow
def test_two_rank_zero2_resume_equals_the_straight_run(train_shards, tmp_path, forkable):
    """The same with 2 ranks: each rank's optimizer partition and RNG states come back from its own file."""
    from tests.helpers.gloo import free_port
    from tests.train.helpers import spawn_ranks

    spawn_ranks(
        _two_rank_worker, 2, ([free_port(), free_port()], str(train_shards), str(tmp_path)), timeout=600
    )
    for rank_file in ("rank-00000.pt", "rank-00001.pt"):
        a, b = (
            torch.load(tmp_path / name / f"checkpoints/step-{K:06d}" / rank_file, weights_only=True)
            for name in ("straight", "resumed")
        )
        for i, (x, y) in enumerate(
            zip(
                a["optimizer"]["single_partition_of_fp32_groups"],
                b["optimizer"]["single_partition_of_fp32_groups"],
            )
        ):
            assert torch.equal(x, y), f"{rank_file}: fp32 partition {i} differs after resuming"
    a, b = (_final_state(tmp_path / name) for name in ("straight", "resumed"))
    assert not [k for k in a if not torch.equal(a[k], b[k])]
