"""Resuming at another world size: a 2-rank ZeRO-2 checkpoint continued on 1 rank and on 3 ranks.

The global batch (6) stays what the config says; the micro-batch stays 1 and the gradient
accumulation is re-derived from the ranks present (3, 6, 2 for 2, 1, 3 ranks). The resumed runs
continue the same run: same run directory and MLflow run, the step count and the LR schedule
continued, every rank's optimizer partition re-partitioned from the saved ones, and the ranks
end with the same parameters. What is not exact at another world size (RNG streams, the rest of
the epoch's samples) is docs/training.md's "Resuming at another world size".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hvdistill.train.run import RunHooks, run
from tests.train.helpers import Crash, exact_resume_config, rank_env, spawn_ranks

K, CRASH = 6, 3


def _config(shards: Path, out: Path, name: str):
    return exact_resume_config(shards, out, name, 2, K, "train.global_batch=6", "train.micro_batch=1")


def _crash_at_checkpoint(step: int, path: Path) -> None:
    if step == CRASH:
        raise Crash(f"stopped after the checkpoint of step {step}")


def _record_live_parameters(out: Path, name: str, rank: int) -> None:
    """Every checkpoint write first saves a digest of this rank's live parameters (the engine's
    module, not a file only rank 0 writes): the last one is the run's final state on this rank."""
    import hvdistill.train.checkpoint as ckpt

    write_parts = ckpt.write_parts

    def recording(directory, engine, loss_fn):
        params = sorted(engine.module.named_parameters())  # per-rank BatchNorm statistics left out
        torch.save(torch.cat([p.detach().flatten() for _, p in params]), out / f"{name}-final-{rank}.pt")
        return write_parts(directory, engine, loss_fn)

    ckpt.write_parts = recording


def _worker(rank: int, world: int, port: int, shards: str, out: str, name: str, crash: bool) -> None:
    torch.set_num_threads(1)
    rank_env(rank, world, port)
    _record_live_parameters(Path(out), name, rank)
    try:
        run(
            _config(Path(shards), Path(out), name),
            RunHooks(on_checkpoint=_crash_at_checkpoint if crash else None),
        )
    except Crash:
        assert crash


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_and_on_three_ranks(train_shards, tmp_path, forkable):
    spawn_ranks(_worker, 2, (str(train_shards), str(tmp_path), "grown", True), timeout=600)
    shutil.copytree(tmp_path / "grown", tmp_path / "shrunk")  # the same checkpoint, resumed twice
    spawn_ranks(_worker, 1, (str(train_shards), str(tmp_path), "shrunk", False), timeout=600)
    spawn_ranks(_worker, 3, (str(train_shards), str(tmp_path), "grown", False), timeout=600)

    for name, world in (("shrunk", 1), ("grown", 3)):
        run_dir = tmp_path / name
        meta = json.loads((run_dir / "checkpoints" / f"step-{K:06d}" / "meta.json").read_text())
        assert meta["world_size"] == world and meta["step"] == K and meta["engine"]["global_steps"] == K
        assert meta["total_steps"] == K  # the schedule total is recorded (max_steps=K: equal either way)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [line["step"] for line in lines if "loss/total" in line]
        assert steps == list(range(1, K + 1)), steps  # continued after step CRASH, nothing twice
        assert all(torch.isfinite(torch.tensor(line["loss/total"])) for line in lines if "loss/total" in line)
        finals = [torch.load(tmp_path / f"{name}-final-{r}.pt", weights_only=True) for r in range(world)]
        assert all(torch.equal(finals[0], f) for f in finals[1:]), "the ranks ended with different parameters"
        record = json.loads((run_dir / "tracking.json").read_text())
        from hvdistill.tracking import metric_history

        history = metric_history(record["uri"], record["run_id"], "lr")  # one MLflow run, one schedule
        assert sorted({s for s, _ in history}) == list(range(1, K + 1))
