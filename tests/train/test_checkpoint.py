"""Checkpoint bookkeeping without training: which directories count, RNG states, the weights-only rule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from hvdistill.train.checkpoint import (
    FORMAT,
    list_checkpoints,
    read_meta,
    rng_state,
    set_rng_state,
)
from hvdistill.train.engine import plain_state


def _complete(root, step: int) -> None:
    path = root / "checkpoints" / f"step-{step:06d}"
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step}))


def test_only_complete_step_directories_count(tmp_path):
    assert list_checkpoints(tmp_path) == []
    _complete(tmp_path, 5)
    _complete(tmp_path, 40)
    half = tmp_path / "checkpoints/.tmp-step-000050"  # a save that died before its rename
    half.mkdir()
    (half / "meta.json").write_text("{}")
    (tmp_path / "checkpoints/step-000060").mkdir()  # no meta.json: never a committed checkpoint
    (tmp_path / "checkpoints/step-7").mkdir()  # not the writer's name
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 40]
    newest = list_checkpoints(tmp_path)[-1][1]
    assert newest.name == "step-000040" and read_meta(newest)["step"] == 40
    (tmp_path / "checkpoints/step-000005/meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an hvdistill checkpoint"):
        read_meta(tmp_path / "checkpoints/step-000005")


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_plain_state_drops_what_weights_only_refuses(tmp_path):
    from enum import IntEnum

    class Stage(IntEnum):
        TWO = 2

    state = {
        "t": torch.ones(2),
        "n": 3,
        "s": "x",
        "obj": object(),
        "enum": Stage.TWO,
        "l": [1.0, torch.zeros(1)],
    }
    plain = plain_state(state)
    assert set(plain) == {"t", "n", "s", "l"}
    torch.save(plain, tmp_path / "p.pt")
    assert torch.load(tmp_path / "p.pt", weights_only=True)["n"] == 3
