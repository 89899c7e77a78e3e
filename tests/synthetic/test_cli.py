"""`hvdistill synth`: writes either layout from `synth.*` overrides, refuses bad values with exit code 2."""

from __future__ import annotations

import json

from hvdistill.cli import main as hvdistill_main
from hvdistill.synthetic.cli import main


def test_synth_writes_semantickitti_from_overrides(tmp_path):
    out = tmp_path / "kitti"
    rc = main(
        [
            "--format",
            "semantickitti",
            "--out",
            str(out),
            "--side-outputs",
            "--no-progress",
            "synth.frames_per_scene=1",
            "synth.seed=9",
            "synth.image_width=64",
            "synth.image_height=36",
            "synth.kitti_sequences=['03']",
        ]
    )
    assert rc == 0
    assert (out / "sequences/03/velodyne/000000.bin").stat().st_size > 0
    assert not (out / "sequences/00").exists()
    assert (out / "side_outputs/sequences/03/image_2/000000_class.png").exists()
    written = json.loads((out / "synth.json").read_text())
    assert written["seed"] == 9 and written["kitti_sequences"] == ["03"]


def test_synth_verb_writes_nuscenes(tmp_path):
    out = tmp_path / "nus"
    config = tmp_path / "synth.yaml"
    config.write_text("synth:\n  scenes: 3\n  image_width: 64\n  image_height: 36\n")
    rc = hvdistill_main(
        [
            "synth",
            "--format",
            "nuscenes",
            "--config",
            str(config),
            "--version",
            "v1.0-mini",
            "--out",
            str(out),
            "--no-progress",
            "synth.scenes=1",  # the override wins over the YAML
            "synth.frames_per_scene=1",
        ]
    )
    assert rc == 0 and (out / "v1.0-mini" / "sample.json").exists()
    assert len(json.loads((out / "v1.0-mini" / "scene.json").read_text())) == 1
    assert json.loads((out / "synth.json").read_text())["image_width"] == 64


def test_synth_rejects_bad_values(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "synth.scenes=0", "synth.image_width=8"]) == 2
    err = capsys.readouterr().err
    assert "synth.scenes: 0 must be >= 1" in err and "synth.image_width: 8" in err
    assert main(["--out", str(tmp_path), "synth.scenez=1"]) == 2
    assert "did you mean 'synth.scenes'" in capsys.readouterr().err
    assert main(["--format", "nuscenes"]) == 2
    assert not any(tmp_path.iterdir())


def test_synth_validates_only_its_own_section(tmp_path):
    # a config whose model section is unusable for training still generates a world
    rc = main(
        [
            "--out",
            str(tmp_path / "nus"),
            "--no-progress",
            "synth.scenes=1",
            "synth.frames_per_scene=1",
            "synth.image_width=32",
            "synth.image_height=18",
            "model.lidar.bev_head_stride=3",
        ]
    )
    assert rc == 0
