"""`hvdistill inspect` on the generated datasets: what it prints and its exit status."""

from __future__ import annotations

from hvdistill.cli import main as hvdistill_main
from hvdistill.data.sources.cli import main


def test_inspect_nuscenes_reports_scenes_cameras_labels_and_pairs(nuscenes_root, capsys):
    assert (
        hvdistill_main(
            [
                "inspect",
                "--source",
                "nuscenes",
                "--root",
                str(nuscenes_root),
                "--split",
                "train",
                "--limit",
                "0",
            ]
        )
        == 0
    )
    out_train = capsys.readouterr().out
    assert main(["--source", "nuscenes", "--root", str(nuscenes_root), "--split", "val"]) == 0
    out_val = capsys.readouterr().out
    for out in (out_train, out_val):
        assert "source      nuscenes (v1.0-trainval)" in out  # version detected from the root
    out = out_train if "samples     0 in split" not in out_train else out_val
    assert "0 damaged" in out and "CAM_FRONT_LEFT" in out and "192x108" in out
    assert "nuscenes-lidarseg-16" in out and "driveable_surface" in out
    pairs = [line for line in out.splitlines() if line.startswith("camera")]
    assert len(pairs) == 6 and all("pairs per sample: min" in line for line in pairs)


def test_inspect_semantickitti_and_damage_exit_status(kitti_copy, capsys):
    assert main(["--source", "semantickitti", "--root", str(kitti_copy), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "semantickitti-19" in out and "image_2" in out and "road" in out
    velodyne = sorted((kitti_copy / "sequences").glob("*/velodyne/*.bin"))[0]
    velodyne.write_bytes(velodyne.read_bytes()[:-1])
    split = "val" if velodyne.parts[-3] == "08" else "train"
    assert main(["--source", "semantickitti", "--root", str(kitti_copy), "--split", split]) == 1
    out = capsys.readouterr().out
    assert "1 damaged" in out and str(velodyne) in out


def test_inspect_bad_root_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["--source", "semantickitti", "--root", str(tmp_path)]) == 2
    assert "no sequences" in capsys.readouterr().err
    assert main(["--source", "nuscenes", "--root", str(tmp_path), "--version", "v1.0-mini"]) == 2
    assert "no table folder" in capsys.readouterr().err
