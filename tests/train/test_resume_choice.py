"""hvdistill/train/resume.py: the newest intact checkpoint is resumed from; damaged ones are skipped, named.

Checkpoint directories are built by hand with the layout and file records `save_checkpoint`
writes (no training needed): the choice reads only meta.json, sizes and sha256 digests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hvdistill.storage import Location
from hvdistill.train import checkpoint as ckpt
from hvdistill.train.resume import CheckpointError, choose_checkpoint, shared_candidates, storage_candidates


def _checkpoint(root: Path, step: int) -> Path:
    """A 1-rank ZeRO-0 checkpoint of `step` whose files are recorded in its meta.json."""
    path = root / ckpt.CHECKPOINTS / ckpt.step_name(step)
    path.mkdir(parents=True)
    for name in (ckpt.MODEL, ckpt.rank_file(0)):
        (path / name).write_bytes(f"{name} of step {step}".encode() * 100)
    files = {p.name: ckpt._file_record(p) for p in sorted(path.iterdir())}
    meta = {"format": ckpt.FORMAT, "step": step, "world_size": 1, "zero_stage": 0, "files": files}
    (path / ckpt.META).write_text(json.dumps(meta))
    return path


def test_the_newest_intact_checkpoint_wins_and_damaged_ones_are_named(tmp_path, caplog):
    steps = [_checkpoint(tmp_path, s) for s in (1, 2, 3)]
    assert choose_checkpoint(shared_candidates(tmp_path), tmp_path) == steps[2]
    with open(steps[2] / ckpt.MODEL, "r+b") as f:  # truncated: a crash while copying, a full disk
        f.truncate(10)
    (steps[1] / ckpt.rank_file(0)).write_bytes(b"same size?" * 1)  # rewritten: another size
    with caplog.at_level(logging.WARNING):
        chosen = choose_checkpoint(shared_candidates(tmp_path), tmp_path)
    assert chosen == steps[0]
    text = caplog.text
    assert "step-000003" in text and "model.pt has 10 bytes" in text and "step-000002" in text


def test_no_intact_checkpoint_is_one_line_with_the_way_out(tmp_path):
    path = _checkpoint(tmp_path, 5)
    (path / ckpt.META).write_text("{ truncated")
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(shared_candidates(tmp_path), tmp_path)
    line = str(err.value)
    assert "\n" not in line and "step-000005" in line and "train.resume=never" in line
    assert choose_checkpoint([], tmp_path) is None  # nothing to resume: a fresh start


def test_a_corrupted_file_of_the_same_size_is_caught_by_its_digest(tmp_path):
    path = _checkpoint(tmp_path, 7)
    data = bytearray((path / ckpt.MODEL).read_bytes())
    data[5] ^= 0xFF
    (path / ckpt.MODEL).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.pt differs from what was written"):
        choose_checkpoint(shared_candidates(tmp_path), tmp_path)


def test_checkpoints_in_object_storage_are_fetched_and_checked(s3_bucket, tmp_path):
    local = tmp_path / "written"
    storage = Location(f"{s3_bucket}/runs/r")
    for step in (2, 4):
        source = _checkpoint(local, step)
        for file in source.iterdir():
            (storage / source.name / file.name).upload(file)
    (storage / "step-000004" / ckpt.rank_file(0)).write_bytes(b"lost half")  # a damaged upload
    assert [c.name for c in storage_candidates(storage)] == ["step-000004", "step-000002"]
    run_dir = tmp_path / "node-local"
    chosen = choose_checkpoint(storage_candidates(storage), run_dir)
    assert chosen == run_dir / ckpt.CHECKPOINTS / ".restore" / "step-000002"
    assert (chosen / ckpt.MODEL).read_bytes() == (
        local / ckpt.CHECKPOINTS / "step-000002" / ckpt.MODEL
    ).read_bytes()
    assert not (
        run_dir / ckpt.CHECKPOINTS / ".restore" / "step-000004"
    ).exists()  # copies not used are dropped
