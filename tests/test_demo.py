"""The tiny end-to-end run: `hvdistill demo` on a minimal synthetic world, every stage real
(synthetic nuScenes written and loaded by nuscenes-devkit, Ray sharding and verification on
127.0.0.1, pretraining on 2 Ray Train workers with DeepSpeed and MLflow, the backbone exported,
then the chained fine-tuning sweep on Ray Tune and its report)."""

import json

from launch.demo import main


# The tiny version of the whole chain that `make test` keeps: about 80 s on 2 cores, nearly all
# of it process start-up (Ray, Ray Train workers importing torch + DeepSpeed + spconv, Tune trials).
def test_demo_runs_every_stage(tmp_path, capsys):
    rc = main(
        [
            "--out",
            str(tmp_path),
            "--workers",
            "1",
            "synth.scenes=2",
            "synth.frames_per_scene=2",  # one sample per rank of the 2 Ray Train workers
            "synth.image_width=320",
            "synth.image_height=180",
            "data.stored_image_width=320",
            "data.stored_image_height=180",
            "augment.min_pairs_per_camera=64",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.progress=false",
            "finetune.max_steps=2",
            "sweep.label_fractions=[1.0]",
            "sweep.seeds=[0]",
            "dist.max_failures=0",  # a failure here is a bug: report it, do not retry
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["samples"] == 4 and not manifest["skipped"]  # one train and one val scene
    assert "precision.image_dtype: auto -> " in out  # the hardware's precision choice is in the log
    assert "launch: finished 2 steps" in out
    backbones = list((tmp_path / "runs").glob("*/backbone.pt"))
    assert len(backbones) == 1
    assert "mlflow ui" in out
    summary = list((tmp_path / "finetune").glob("*/report/summary.md"))
    assert len(summary) == 1, out
    table = summary[0].read_text()
    assert "random" in table and "nan" not in table.lower()
    assert "all stages passed" in out
    assert "=== where to look ===" in out and "label_efficiency.png" in out
