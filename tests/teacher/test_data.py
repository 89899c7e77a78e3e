"""Listing and reading image / class-map pairs: splits, both layouts, damage, paths out of the root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hvdistill.config import NUSCENES_CAMERAS
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.eval.classes import class_map
from hvdistill.synthetic import side_output_paths
from hvdistill.teacher.crops import PairViews
from hvdistill.teacher.data import PairError, class_map_path, list_pairs, read_pair
from tests.teacher.conftest import teacher_config


def test_class_map_path_is_the_writers(teacher_world):
    image = teacher_world / "samples/CAM_FRONT/x.jpg"
    assert (
        class_map_path(teacher_world, image) == side_output_paths(teacher_world, "samples/CAM_FRONT/x.jpg")[0]
    )


def test_splits_hold_disjoint_scenes_of_every_camera(teacher_world, tmp_path):
    cfg = teacher_config(teacher_world, tmp_path)
    train, val = list_pairs(cfg, "train"), list_pairs(cfg, "val")
    assert len(train.pairs) == len(val.pairs) == 2 * len(NUSCENES_CAMERAS)  # 1 scene x 2 keyframes each
    assert not train.bad and not val.bad
    assert {p.chunk for p in train.pairs}.isdisjoint({p.chunk for p in val.pairs})
    assert all(p.class_map.is_file() for p in train.pairs + val.pairs)


def test_read_pair_gives_stored_size_downstream_classes(teacher_world, tmp_path):
    cfg = teacher_config(teacher_world, tmp_path, "data.stored_image_width=48", "data.stored_image_height=27")
    listing = list_pairs(cfg, "train")
    image, classes = read_pair(listing.pairs[0], cfg.data, listing.lookup)
    assert image.shape == (27, 48, 3) and classes.shape == (27, 48) and image.flags.writeable
    assert classes.max() < class_map("nuscenes").num_classes and (classes > 0).any()


def test_semantickitti_layout_is_read_too(kitti_root, tmp_path):
    cfg = teacher_config(kitti_root, tmp_path, dataset="semantickitti")
    train, val = list_pairs(cfg, "train"), list_pairs(cfg, "val")
    assert {p.chunk for p in train.pairs} == {"00"} and {p.chunk for p in val.pairs} == {"08"}
    _, classes = read_pair(train.pairs[0], cfg.data, train.lookup)
    assert classes.max() < class_map("semantickitti").num_classes and (classes > 0).any()


def test_a_world_without_side_outputs_is_refused_with_the_fix(nuscenes_root, tmp_path):
    with pytest.raises(DatasetLayoutError, match="--side-outputs"):
        list_pairs(teacher_config(nuscenes_root, tmp_path), "train")


def _damage(root: Path) -> tuple[Path, Path]:
    """Truncate one train image and overwrite another's class map with garbage; return both paths."""
    listing = list_pairs(teacher_config(root, root), "train")
    image, class_map = listing.pairs[0].image, listing.pairs[1].class_map
    image.write_bytes(image.read_bytes()[:100])
    class_map.write_bytes(b"not a png")
    return image, class_map


def test_damaged_image_and_class_map_become_errors(teacher_world_copy, tmp_path):
    image, class_map = _damage(teacher_world_copy)
    cfg = teacher_config(teacher_world_copy, tmp_path)
    listing = list_pairs(cfg, "train")
    views = PairViews(listing.pairs, cfg, listing.lookup)
    errors = [views[i] for i in range(len(views)) if isinstance(views[i], PairError)]
    assert sorted(e.path for e in errors) == sorted([str(image), str(class_map)])
    with pytest.raises(SampleReadError, match="class map"):
        read_pair(listing.pairs[1], cfg.data, listing.lookup)


def test_unknown_ids_and_wrong_size_class_maps_are_damage(teacher_world_copy, tmp_path):
    from PIL import Image

    cfg = teacher_config(teacher_world_copy, tmp_path)
    listing = list_pairs(cfg, "train")
    first, second = listing.pairs[0], listing.pairs[1]
    Image.fromarray(np.full((54, 96), 200, np.uint8)).save(first.class_map)  # 200: no lidarseg class
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(second.class_map)
    with pytest.raises(SampleReadError, match=r"ids \[200\]"):
        read_pair(first, cfg.data, listing.lookup)
    with pytest.raises(SampleReadError, match="10x10"):
        read_pair(second, cfg.data, listing.lookup)


def test_symlinks_out_of_the_root_are_never_followed(teacher_world_copy, tmp_path):
    cfg = teacher_config(teacher_world_copy, tmp_path)
    pair = list_pairs(cfg, "train").pairs[0]
    outside = tmp_path / "outside.png"
    outside.write_bytes(pair.class_map.read_bytes())
    pair.class_map.unlink()
    os.symlink(outside, pair.class_map)
    listing = list_pairs(cfg, "train")
    assert [b.path for b in listing.bad] == [
        str(pair.class_map)
    ] and "leaves the dataset root" in listing.bad[0].reason
    assert pair.image not in [p.image for p in listing.pairs]


def test_a_bomb_class_map_or_image_is_one_skipped_pair(teacher_world_copy, tmp_path):
    from tests.data.sources.test_image_limits import declared_png

    cfg = teacher_config(teacher_world_copy, tmp_path)
    listing = list_pairs(cfg, "train")
    declared_png(listing.pairs[0].class_map, 20000, 10000)
    declared_png(listing.pairs[1].image, 4000, 3000)  # under Pillow's limit, over data.max_image_pixels
    views = PairViews(listing.pairs, cfg, listing.lookup)
    errors = [views[i] for i in range(len(views)) if isinstance(views[i], PairError)]
    assert sorted(e.path for e in errors) == sorted(
        [str(listing.pairs[0].class_map), str(listing.pairs[1].image)]
    )
    assert all("decoding" in e.reason for e in errors)
    assert not isinstance(views[2], PairError)  # the others are read
