"""The class-free (geometry) teacher: its bins, loss and scores, its data, and a run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvdistill.cli import main
from hvdistill.config import TeacherTrainConfig
from hvdistill.data.errors import SampleReadError
from hvdistill.teacher.crops import PairViews, crop_geometry
from hvdistill.teacher.data import PairError, list_pairs, read_geometry
from hvdistill.teacher.geometry import GeometryScores, bin_centres, bin_edges, depth_bins_of, geometry_loss
from tests.helpers.world import NUSCENES_VERSION
from tests.teacher.conftest import TINY, assert_loads_strictly, teacher_config

GEOMETRY = "teacher_train.target=geometry"


def test_bins_are_log_spaced_and_clamp_outside_depths():
    t = TeacherTrainConfig(depth_bins=4, depth_min=1.0, depth_max=16.0)
    torch.testing.assert_close(bin_edges(t), torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]))
    torch.testing.assert_close(bin_centres(t)[0], torch.tensor(2.0).sqrt())
    depth = torch.tensor([[[0.0, 0.5, 1.5, 3.0, 9.0, 100.0]]])  # (1, 1, 6)
    assert depth_bins_of(depth, t).tolist() == [[[-1, 0, 0, 1, 3, 3]]]


def _targets(depth: float, normal: tuple[float, float, float]) -> torch.Tensor:
    """(1, 4, 2, 2): the first row has a surface, the second is sky."""
    out = torch.zeros(1, 4, 2, 2)
    out[0, 0, 0] = depth
    out[0, 1:, 0] = torch.tensor(normal)[:, None]
    return out


def test_a_perfect_prediction_scores_perfectly_and_sky_is_ignored():
    t = TeacherTrainConfig(depth_bins=4, depth_min=1.0, depth_max=16.0, normal_weight=2.0)
    targets = _targets(3.0, (0.0, -1.0, 0.0))
    out = torch.zeros(1, 7, 2, 2)
    out[:, 1] = 50.0  # bin 1 = [2, 4) m
    out[:, 5] = -3.0  # normal (0, -1, 0) after normalisation
    assert float(geometry_loss(out, targets, t)) < 1e-6
    scores = GeometryScores(t)
    scores.update(out, targets)
    got = scores.result()
    assert got["depth_bin_accuracy"] == 1.0 and got["depth_pixels"] == got["normal_pixels"] == 2
    assert got["depth_abs_rel"] == pytest.approx(abs(8**0.5 - 3.0) / 3.0, rel=1e-5)
    assert got["normal_angle_mean_deg"] < 0.1 and got["normal_within_11.25_deg"] == 1.0
    out[:, 5], out[:, 3] = 0.0, 1.0  # normal now (1, 0, 0): 90 degrees off
    assert float(geometry_loss(out, targets, t)) == pytest.approx(2.0, abs=1e-4)


def test_a_flip_mirrors_the_normal():
    target = np.zeros((2, 3, 4), np.float32)
    target[:, 0] = (5.0, 0.6, 0.0, 0.8)  # left column faces right and towards the camera
    out = crop_geometry(target, (0, 0, 3, 2), 3, 2, flip=True)  # (4, 2, 3)
    np.testing.assert_allclose(out[:, 0, 2], [5.0, -0.6, 0.0, 0.8])
    assert (out[:, :, :2] == 0).all()


def test_geometry_listing_needs_depth_and_normal_maps_not_class_maps(teacher_world_copy, tmp_path):
    cfg = teacher_config(teacher_world_copy, tmp_path, GEOMETRY)
    listing = list_pairs(cfg, "train")
    for pair in listing.pairs:
        pair.class_map.unlink()
    image, target = read_geometry(listing.pairs[0], cfg.data)
    assert image.shape == (54, 96, 3) and target.shape == (54, 96, 4)
    surface = target[..., 1:].any(-1)
    assert surface.any() and (target[..., 0][~surface] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(target[..., 1:][surface], axis=-1), 1.0, atol=1e-5)
    views = PairViews(listing.pairs, cfg, listing.lookup)
    assert views[0][1].shape == (4, 32, 56)


def test_damaged_missing_or_bomb_maps_are_skipped_pairs(teacher_world_copy, tmp_path):
    from PIL import Image

    from tests.data.sources.test_image_limits import declared_png

    cfg = teacher_config(teacher_world_copy, tmp_path, GEOMETRY)
    pairs = list_pairs(cfg, "train").pairs
    pairs[0].normal_map.write_bytes(pairs[0].normal_map.read_bytes()[:60])  # truncated
    pairs[1].depth_map.unlink()
    declared_png(pairs[2].normal_map, 20000, 10000)
    Image.fromarray(np.zeros((54, 96), np.uint8)).save(pairs[3].normal_map)  # not RGB
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(pairs[4].normal_map)  # wrong size
    views = PairViews(pairs, cfg, None)
    errors = [views[i] for i in range(5)]
    assert all(isinstance(e, PairError) for e in errors)
    assert [e.path for e in errors] == [
        str(pairs[0].normal_map),
        str(pairs[1].depth_map),
        *(str(p.normal_map) for p in pairs[2:5]),
    ]
    assert "missing" in errors[1].reason and "decoding" in errors[2].reason and "mode L" in errors[3].reason
    assert not isinstance(views[5], PairError)
    with pytest.raises(SampleReadError, match="5x5"):
        read_geometry(pairs[4], cfg.data)


def test_geometry_teacher_trains_and_pretraining_loads_it_strictly(teacher_world, tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    source = f"data.sources=[{{name: nuscenes, root: {teacher_world}, version: {NUSCENES_VERSION}}}]"
    argv = [source, *TINY, "teacher_train.steps=2", GEOMETRY, f"teacher_train.output={out}"]
    assert main(["teacher", "train", *argv]) == 0
    assert "teacher (geometry)" in capsys.readouterr().out
    info = assert_loads_strictly(out)
    assert info["target"] == "geometry" and info["val"]["images"] == 4 and info["val"]["bad"] == 0
    val = info["val"]
    assert 0.0 <= val["depth_bin_accuracy"] <= 1.0 and val["depth_abs_rel"] > 0
    assert 0.0 <= val["normal_angle_mean_deg"] <= 180.0 and val["depth_pixels"] > 0
    for limit in ("11.25", "22.5", "30"):
        assert 0.0 <= val[f"normal_within_{limit}_deg"] <= 1.0
    assert "miou" not in val
