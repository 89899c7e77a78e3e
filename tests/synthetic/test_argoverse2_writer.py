"""The Argoverse 2 writer: the real layout and column types, determinism, and the `av2` devkit opens it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.feather as feather
import pytest

from hvdistill.config import load_config
from hvdistill.config.data import ARGOVERSE2_RING_CAMERAS
from hvdistill.synthetic.argoverse2_writer import NS, camera_shots, log_id, write_argoverse2
from hvdistill.synthetic.cli import main as synth_main
from tests.helpers.av2_world import AV2_SPLITS, AV2_SWEEPS, av2_synth_config

# the column types of the real files (the devkit's sample log, read with pyarrow)
LIDAR_TYPES = {"x": "halffloat", "y": "halffloat", "z": "halffloat", "intensity": "uint8"}
LIDAR_TYPES |= {"laser_number": "uint8", "offset_ns": "int32"}
POSE_TYPES = {"qw": "double", "qx": "double", "qy": "double", "qz": "double", "tx_m": "double"}
INTRINSIC_TYPES = {"sensor_name": "string", "fx_px": "double", "k1": "double", "height_px": "uint16"}


def log_dirs(root: Path) -> list[Path]:
    return [d for split in AV2_SPLITS for d in sorted((root / split).iterdir())]


def types(path: Path) -> dict[str, str]:
    schema = feather.read_table(path).schema
    return {f.name: str(f.type) for f in schema}


def test_layout_column_types_and_a_pose_at_every_timestamp(av2_root):
    cfg = av2_synth_config()
    logs = log_dirs(av2_root)
    assert [d.name for d in logs] == [log_id(5, split, 0) for split in AV2_SPLITS]
    for log in logs:
        sweeps = sorted((log / "sensors" / "lidar").glob("*.feather"))
        assert len(sweeps) == AV2_SWEEPS
        assert all(LIDAR_TYPES[k] == v for k, v in types(sweeps[0]).items()) and len(types(sweeps[0])) == 6
        lidar = feather.read_table(sweeps[0])
        lasers = np.unique(lidar["laser_number"].to_numpy())
        beams = cfg.argoverse2.lidar_beams
        assert lasers.min() < beams <= lasers.max() < 2 * beams  # both stacked units return
        images = {c: sorted((log / "sensors" / "cameras" / c).glob("*.jpg")) for c in ARGOVERSE2_RING_CAMERAS}
        assert all(len(v) == 2 * AV2_SWEEPS for v in images.values())  # 20 Hz cameras, 10 Hz LiDAR
        poses = feather.read_table(log / "city_SE3_egovehicle.feather")
        assert str(poses.schema.field("timestamp_ns").type) == "int64"
        assert all(str(poses.schema.field(k).type) == v for k, v in POSE_TYPES.items())
        stamps = {int(p.stem) for p in sweeps} | {int(p.stem) for v in images.values() for p in v}
        assert set(poses["timestamp_ns"].to_pylist()) == stamps
        moved = np.hypot(np.diff(poses["tx_m"].to_numpy()), np.diff(poses["ty_m"].to_numpy()))
        assert (moved > 0).all()  # the ego moves between any two timestamps
        intrinsics = feather.read_table(log / "calibration" / "intrinsics.feather")
        assert all(
            types(log / "calibration" / "intrinsics.feather")[k] == v for k, v in INTRINSIC_TYPES.items()
        )
        sizes = dict(zip(intrinsics["sensor_name"].to_pylist(), intrinsics["width_px"].to_pylist()))
        assert sizes["ring_front_center"] == 62 and sizes["ring_front_left"] == 82  # portrait / landscape
        sensors = feather.read_table(log / "calibration" / "egovehicle_SE3_sensor.feather")
        assert set(sensors["sensor_name"].to_pylist()) == {*ARGOVERSE2_RING_CAMERAS, "up_lidar", "down_lidar"}
        assert (log / "annotations.feather").is_file()
    assert json.loads((av2_root / "synth.json").read_text())["argoverse2"]["image_scale"] == 0.04


def test_each_sweep_period_holds_two_images_of_every_camera_nearest_either_side():
    cfg = av2_synth_config()
    shots = camera_shots(cfg, 4)
    sweep = round(4 * NS / cfg.argoverse2.lidar_hz)
    assert sorted(i for i, _ in shots) == sorted(list(range(7)) * 2)
    nearest = {
        i: min((t for j, t in shots if j == i), key=lambda t: abs(t - sweep)) - sweep for i in range(7)
    }
    assert (
        min(nearest.values()) < 0 < max(nearest.values())
    )  # before the sweep for some cameras, after for others
    assert all(abs(d) < 0.025 * NS for d in nearest.values())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")
    }


def test_writing_is_deterministic_for_a_seed(av2_root, tmp_path):
    train = log_dirs(av2_root)[0]
    again = write_argoverse2(tmp_path / "again", av2_synth_config(), splits=["train"], progress=False)
    assert tree_digest(again / "train") == tree_digest(train.parent)
    other = write_argoverse2(
        tmp_path / "other", av2_synth_config(seed=6, frames_per_scene=1), ["train"], progress=False
    )
    sweep = next((other / "train").glob("*/sensors/lidar/*.feather"))
    assert sweep.read_bytes() != next((train / "sensors" / "lidar").glob("*.feather")).read_bytes()


def test_the_devkit_opens_the_logs_and_finds_the_nearest_images(av2_root):
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader
    from av2.structures.sweep import Sweep

    cfg = av2_synth_config()
    for split in AV2_SPLITS:
        loader = AV2SensorDataLoader(av2_root / split, av2_root / split)
        (log,) = loader.get_log_ids()
        stamps = loader.get_ordered_log_lidar_timestamps(log)
        assert len(stamps) == AV2_SWEEPS and np.all(np.diff(stamps) == NS // cfg.argoverse2.lidar_hz)
        sweep = Sweep.from_feather(loader.get_lidar_fpath(log, stamps[1]))
        assert len(sweep) > 1000 and sweep.laser_number.max() < 2 * cfg.argoverse2.lidar_beams
        for i, camera in enumerate(ARGOVERSE2_RING_CAMERAS):
            image = loader.get_closest_img_fpath(log, camera, stamps[1])
            offset = cfg.argoverse2.camera_offset_s + i * cfg.argoverse2.camera_stagger_s
            assert int(image.stem) - stamps[1] == round(offset * NS)
            pinhole = loader.get_log_pinhole_camera(log, camera)
            assert pinhole.width_px * pinhole.height_px == 82 * 62
            loader.get_city_SE3_ego(log, int(image.stem))  # a pose at the image's exact timestamp
        assert len(loader.get_labels_at_lidar_timestamp(log, stamps[0]).cuboids) == 0


def test_synth_cli_writes_argoverse2_and_checks_its_section(tmp_path, capsys):
    out = tmp_path / "av2"
    args = ["--format", "argoverse2", "--out", str(out), "--no-progress", "synth.frames_per_scene=1"]
    args += [
        "synth.argoverse2.splits=[val]",
        "synth.argoverse2.image_scale=0.02",
        "synth.lidar_points_per_beam=90",
    ]
    assert synth_main([*args, "--side-outputs"]) == 0
    (log,) = (out / "val").iterdir()
    assert len(list((log / "sensors" / "lidar").glob("*.feather"))) == 1 and not (out / "train").exists()
    image = next((log / "sensors" / "cameras" / "ring_side_left").glob("*.jpg"))
    side = out / "side_outputs" / image.relative_to(out).with_suffix("")
    assert side.with_name(side.name + "_depth.png").is_file()
    capsys.readouterr()
    bad = [
        "synth.argoverse2.image_scale=0.001",
        "synth.argoverse2.camera_stagger_s=0.01",
        "synth.argoverse2.logs=0",
    ]
    assert synth_main(["--format", "argoverse2", "--out", str(tmp_path / "no"), *bad]) == 2
    err = capsys.readouterr().err
    assert all(k in err for k in ("image_scale", "camera_stagger_s", "argoverse2.logs")), err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "override, problem",
    [
        ("synth.argoverse2.splits=[train,dev]", "splits"),
        ("synth.argoverse2.lidar_beams=129", "lidar_beams"),
        ("synth.argoverse2.lidar_fov_down_deg=20", "lidar_fov_down_deg"),
        ("synth.argoverse2.camera_hz=0", "camera_hz"),
    ],
)
def test_argoverse2_section_problems_name_the_key(override, problem):
    with pytest.raises(ValueError, match=problem):
        load_config(None, [override], sections=("synth",))
    faster = ["synth.argoverse2.camera_hz=40", "synth.argoverse2.camera_offset_s=-0.006"]
    load_config(None, [*faster, "synth.argoverse2.camera_stagger_s=0.002"], sections=("synth",))
