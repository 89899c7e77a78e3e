"""`hvdistill synth`: writes either layout from flags, and refuses bad values with exit code 2."""

from __future__ import annotations

import json

from hvdistill.cli import main as hvdistill_main
from hvdistill.synthetic.cli import main


def test_synth_writes_semantickitti_with_flags(tmp_path):
    out = tmp_path / "kitti"
    rc = main(
        [
            "--format",
            "semantickitti",
            "--frames-per-scene",
            "1",
            "--seed",
            "9",
            "--width",
            "64",
            "--height",
            "36",
            "--sequences",
            "03",
            "--out",
            str(out),
            "--side-outputs",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (out / "sequences/03/velodyne/000000.bin").stat().st_size > 0
    assert (out / "side_outputs/sequences/03/image_2/000000_class.png").exists()
    assert json.loads((out / "synth.json").read_text())["seed"] == 9


def test_synth_verb_writes_nuscenes(tmp_path):
    out = tmp_path / "nus"
    rc = hvdistill_main(
        [
            "synth",
            "--format",
            "nuscenes",
            "--scenes",
            "1",
            "--frames-per-scene",
            "1",
            "--width",
            "64",
            "--height",
            "36",
            "--version",
            "v1.0-mini",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0 and (out / "v1.0-mini" / "sample.json").exists()


def test_synth_rejects_bad_values(tmp_path, capsys):
    assert main(["--scenes", "0", "--out", str(tmp_path)]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err
    assert main(["--format", "nuscenes"]) == 2
