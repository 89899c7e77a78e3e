"""The procedural world and one frame: determinism, placement, class table, sensor layout."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.color_map import get_colormap

from hvdistill.config import SynthConfig
from hvdistill.synthetic.classes import (
    NUSCENES_LIDARSEG_CATEGORIES,
    WORLD_CLASSES,
    check_table,
    class_id,
)
from hvdistill.synthetic.frame import generate_frame
from hvdistill.synthetic.layout import build_world

TINY = dict(scenes=1, frames_per_scene=2, image_width=160, image_height=90)


def test_class_table_matches_the_devkit_category_order():
    check_table()
    # the devkit's colormap lists the lidarseg categories in index order
    assert list(get_colormap()) == list(NUSCENES_LIDARSEG_CATEGORIES)
    assert NUSCENES_LIDARSEG_CATEGORIES.index("vehicle.car") == 17
    assert NUSCENES_LIDARSEG_CATEGORIES.index("movable_object.trafficcone") == 12
    kitti = {c.name: c.kitti_id for c in WORLD_CLASSES}
    assert (kitti["car"], kitti["road"], kitti["vegetation"], kitti["trunk"], kitti["pole"]) == (
        10,
        40,
        70,
        71,
        80,
    )


def test_frame_is_deterministic_for_a_seed():
    a = generate_frame(SynthConfig(**TINY, seed=3), 0, 1)
    b = generate_frame(SynthConfig(**TINY, seed=3), 0, 1)
    c = generate_frame(SynthConfig(**TINY, seed=4), 0, 1)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.classes, b.classes)
    for ca, cb in zip(a.cameras, b.cameras):
        np.testing.assert_array_equal(ca.image, cb.image)
        np.testing.assert_array_equal(ca.depth, cb.depth)
    assert a.points.shape != c.points.shape or not np.array_equal(a.points, c.points)


def test_objects_stand_on_the_surface_they_belong_to():
    world = build_world(SynthConfig(), 0, 1.5)
    bottoms = np.array([o.centre[2] - o.size[2] / 2 for o in world.objects])
    np.testing.assert_allclose(bottoms, 0.0, atol=1e-9)
    centres = np.array([o.centre[:2] for o in world.objects])
    ground = world.road.ground_class(centres[:, 0], centres[:, 1])
    cls = np.array([o.cls for o in world.objects])
    vehicles = np.isin(cls, [class_id(n) for n in ("car", "truck", "bus")])
    assert np.isin(ground[vehicles], [class_id("road"), class_id("parking")]).all()
    people = cls == class_id("pedestrian")
    assert (ground[people] == class_id("sidewalk")).all()


def test_sweep_looks_like_a_nuscenes_lidar_top():
    cfg = SynthConfig(**TINY)
    frame = generate_frame(cfg, 0, 0)
    n = len(frame.points)
    assert 20_000 < n < 35_000
    assert frame.points.dtype == np.float32 and frame.points.shape[1] == 5
    assert set(np.unique(frame.points[:, 4]).astype(int)) <= set(range(cfg.lidar_beams))
    assert 0 <= frame.points[:, 3].min() and frame.points[:, 3].max() <= 255
    # the LiDAR is ~1.84 m above the ground: most ground returns sit near z = -1.84
    ground = np.isin(frame.classes, [class_id("road"), class_id("sidewalk")])
    assert abs(np.median(frame.points[ground, 2]) + 1.84) < 0.1
    assert not np.allclose(frame.lidar_to_ego[:3, :3], np.eye(3))


def test_cameras_fire_after_the_lidar_and_the_ego_moves():
    cfg = SynthConfig(**TINY)
    frame = generate_frame(cfg, 0, 1)
    assert [c.name for c in frame.cameras][0] == "CAM_FRONT"
    for cam in frame.cameras:
        assert cam.time_s >= frame.time_s + cfg.camera_delay_s
        moved = np.linalg.norm(cam.ego_to_global[:3, 3] - frame.ego_to_global[:3, 3])
        assert moved == pytest.approx(cfg.ego_speed_mps * (cam.time_s - frame.time_s), rel=0.05)
        assert cam.image.shape == (90, 160, 3) and cam.classes.shape == (90, 160)
        assert (cam.depth[cam.classes > 0] > 0).all() and (cam.depth[cam.classes == 0] == 0).all()


def test_every_class_appears_in_a_tiny_dataset():
    cfg = SynthConfig(**TINY)
    seen_points, seen_pixels = set(), set()
    for fi in range(cfg.frames_per_scene):
        frame = generate_frame(cfg, 0, fi)
        seen_points |= set(np.unique(frame.classes).tolist())
        for cam in frame.cameras:
            seen_pixels |= set(np.unique(cam.classes).tolist())
    every = {c.id for c in WORLD_CLASSES if c.id}
    assert every <= seen_points, sorted(every - seen_points)
    assert every <= seen_pixels, sorted(every - seen_pixels)


@pytest.mark.slow  # 8 default-size frames (six 800x450 cameras each); the tiny variant above stays fast
def test_every_class_appears_in_a_default_size_dataset():
    cfg = SynthConfig()
    seen = set()
    for si in range(cfg.scenes):
        for fi in range(cfg.frames_per_scene):
            seen |= set(np.unique(generate_frame(cfg, si, fi).classes).tolist())
    assert {c.id for c in WORLD_CLASSES if c.id} <= seen


def test_rendering_threads_do_not_change_the_frame():
    """Cameras render in parallel threads, each with its own random stream: same bytes."""
    cfg1 = SynthConfig(image_width=160, image_height=90, render_threads=1)
    cfg3 = SynthConfig(image_width=160, image_height=90, render_threads=3)
    a, b = generate_frame(cfg1, 0, 1), generate_frame(cfg3, 0, 1)
    np.testing.assert_array_equal(a.points, b.points)
    for ia, ib in zip(a.cameras, b.cameras):
        np.testing.assert_array_equal(ia.image, ib.image)
        np.testing.assert_array_equal(ia.classes, ib.classes)
        np.testing.assert_array_equal(ia.depth, ib.depth)
