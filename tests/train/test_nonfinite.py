"""A non-finite loss on one rank only: both ranks skip that micro-batch together, and past
`train.max_nonfinite_steps` both raise `NonFiniteLossError` at the same step (never a hang).

Two forked gloo ranks run `run(cfg)`; rank 1's loss is made NaN on chosen training micro-batches.
If the ranks disagreed, one would wait forever in a collective the other skipped: the ranks run
under a deadline, so a disagreement fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.gloo import free_port
from tests.train.helpers import rank_env, spawn_ranks, tiny_train_config


def _poison_rank1(rank: int, bad_calls: set[int]) -> None:
    """Rank 1's training loss becomes NaN on its `bad_calls`-th training forward (1-based)."""
    import hvdistill.losses.total as total

    original, calls = total.HybridViewLoss.forward, [0]

    def forward(self, inputs, epoch):
        terms = original(self, inputs, epoch)
        if self.training:
            calls[0] += 1
            if rank == 1 and calls[0] in bad_calls:
                terms.total = terms.total * float("nan")
        return terms

    total.HybridViewLoss.forward = forward


def _scenario(shards: str, out: str, name: str, bad: set[int], rank: int) -> dict:
    import hvdistill.losses.total as total
    from hvdistill.train.loop import NonFiniteLossError
    from hvdistill.train.run import run

    saved = total.HybridViewLoss.forward
    _poison_rank1(rank, bad)
    cfg = tiny_train_config(
        Path(shards),
        f"train.output_dir={out}",
        f"train.run_name={name}",
        "train.global_batch=2",
        "train.max_steps=2",
        "train.checkpoint_every=1",
        "train.max_nonfinite_steps=1",
        "dist.zero_stage=2",
    )
    try:
        result = run(cfg)
        return {"steps": result.steps}
    except NonFiniteLossError as e:
        return {"error_step": e.step, "count": e.count, "terms": e.terms, "message": str(e)}
    finally:
        total.HybridViewLoss.forward = saved


def _worker(rank: int, world: int, port: int, second_port: int, shards: str, out: str) -> None:
    rank_env(rank, world, port)
    import torch

    torch.set_num_threads(1)
    outcome = {"skip": _scenario(shards, out, "one-skip", {2}, rank)}
    os.environ["MASTER_PORT"] = str(second_port)  # a fresh group for the second run
    outcome["stop"] = _scenario(shards, out, "stop", {2, 3}, rank)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(outcome))


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_nonfinite_loss_on_one_rank_is_skipped_by_both_then_stops_both(train_shards, tmp_path, forkable):
    spawn_ranks(_worker, 2, (free_port(), str(train_shards), str(tmp_path)), timeout=300)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # one NaN micro-batch (limit 1): skipped on both ranks, the run still reaches its 2 steps
    assert [o["skip"] for o in outcomes] == [{"steps": 2}, {"steps": 2}]
    meta = json.loads((tmp_path / "one-skip/checkpoints/step-000002/meta.json").read_text())
    # 3 micro-batches (2 steps + the skipped one) = the whole epoch: the position is the next epoch
    assert meta["nonfinite"] == 1 and meta["step"] == 2 and (meta["epoch"], meta["batches_done"]) == (1, 0)
    # a second one exceeds the limit: both ranks raise at the same step with the global terms
    for o in outcomes:
        stop = o["stop"]
        assert stop["error_step"] == 1 and stop["count"] == 2, stop
        assert stop["terms"]["loss/total"] != stop["terms"]["loss/total"]  # NaN
        assert "train.max_nonfinite_steps=1" in stop["message"]
