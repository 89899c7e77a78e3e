"""`hvdistill teacher train` end to end on the tiny world: the checkpoint, its strict load, its JSON."""

from __future__ import annotations

import math

import pytest

from hvdistill.cli import main
from hvdistill.teacher.crops import draw_order
from hvdistill.teacher.data import list_pairs
from hvdistill.teacher.train import TeacherDataError, train_teacher
from tests.helpers.world import NUSCENES_VERSION
from tests.teacher.conftest import TINY, assert_loads_strictly, teacher_config


def test_train_writes_weights_the_pretraining_teacher_loads_strictly(teacher_world, tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    source = f"data.sources=[{{name: nuscenes, root: {teacher_world}, version: {NUSCENES_VERSION}}}]"
    assert (
        main(["teacher", "train", source, *TINY, "teacher_train.steps=2", f"teacher_train.output={out}"]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        f"model.image.weights={out} model.image.weights_format=torchvision model.image.random_init=false"
        in (printed)
    )
    info = assert_loads_strictly(out)
    assert info["steps"] == 2 and info["train_pairs"] == 12 and info["roots"] == [str(teacher_world)]
    assert info["val"]["split"] == "val" and info["val"]["images"] == 4 and info["val"]["bad"] == 0
    assert 0.0 <= info["val"]["accuracy"] <= 1.0 and info["final_loss"] > 0
    assert info["config"]["teacher_train"]["output_stride"] == 16


def _damage_first_draws(root, tmp_path) -> list[str]:
    """Damage the image of the first drawn pair and the class map of the second; return their paths."""
    cfg = teacher_config(root, tmp_path)
    pairs = list_pairs(cfg, "train").pairs
    first, second = (pairs[int(i)] for i in draw_order(len(pairs), 2, cfg.teacher_train.seed))
    first.image.write_bytes(first.image.read_bytes()[:200])
    second.class_map.write_bytes(b"\x89PNG broken")
    return sorted([str(first.image), str(second.class_map)])


@pytest.mark.slow  # ~4 s alone on 2 cores, far more on a busy machine; the data tests cover the reading
def test_damaged_pairs_are_counted_logged_and_skipped(teacher_world_copy, tmp_path, caplog):
    damaged = _damage_first_draws(teacher_world_copy, tmp_path)
    cfg = teacher_config(
        teacher_world_copy, tmp_path, "teacher_train.steps=2", "teacher_train.max_bad_fraction=0.5"
    )
    result = train_teacher(cfg)  # step 1 is all damaged and skipped, step 2 trains
    assert sorted(b["path"] for b in result.bad_pairs) == damaged
    assert all(p in caplog.text for p in damaged)
    assert math.isfinite(result.final_loss) and (tmp_path / "teacher.pt").is_file()


def test_too_many_damaged_pairs_stop_the_run_with_the_key_to_change(teacher_world_copy, tmp_path, capsys):
    damaged = _damage_first_draws(teacher_world_copy, tmp_path)
    cfg = teacher_config(teacher_world_copy, tmp_path, "teacher_train.max_bad_fraction=0")
    with pytest.raises(TeacherDataError, match="max_bad_fraction") as err:
        train_teacher(cfg)
    assert damaged[0] in str(err.value) or damaged[1] in str(err.value)
    assert not (tmp_path / "teacher.pt").exists()
