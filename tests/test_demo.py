"""The tiny end-to-end run: `hvdistill demo` on a minimal synthetic world, every stage real
(synthetic nuScenes written and loaded by nuscenes-devkit, Ray sharding and verification on
127.0.0.1, pretraining on 2 Ray Train workers with DeepSpeed and MLflow, the backbone exported,
then the chained fine-tuning sweep on Ray Tune and its report), with nothing shared on disk but
what a cluster without NFS shares: the shards and the runs' storage (checkpoints of both ranks,
config, metrics, backbone) live on a real S3 endpoint (moto's server on 127.0.0.1, reached through
AWS_ENDPOINT_URL), the sweep reads the backbone from there.

It runs as the user runs it, `hvdistill demo` in its own process: a Ray driver leaves gRPC threads
in the process that inits it, and a DataLoader worker forked later from that process (the next
test's) can crash.
"""

import json
import os
import subprocess
import sys

from hvdistill.storage import Location
from tests.helpers import REPO_ROOT


# The tiny version of the whole chain that `make test` keeps: about 80 s on 2 cores, nearly all
# of it process start-up (Ray, Ray Train workers importing torch + DeepSpeed + spconv, Tune trials).
def test_demo_runs_every_stage(tmp_path, s3_server, s3_bucket):
    cmd = [sys.executable, "-m", "hvdistill.cli", "demo"]
    cmd += [
        "--out",
        str(tmp_path),
        "--storage",
        f"{s3_bucket}/demo",
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
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_ALLOW_FILE_STORE": "true"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-5000:]
    manifest = json.loads(Location(f"{s3_bucket}/demo/shards/manifest.json").read_text())
    assert manifest["samples"] == 4 and not manifest["skipped"]  # one train and one val scene
    assert not (tmp_path / "shards").exists()
    assert "precision.image_dtype: auto -> " in out  # the hardware's precision choice is in the log
    assert "launch: finished 2 steps" in out
    bucket = s3_bucket.removeprefix("s3://")
    stored = s3_server.keys(bucket, "demo/runs/")
    run = next(k.split("/")[2] for k in stored if k.endswith("/backbone.pt"))
    for name in ("backbone.pt", "backbone.json", "config.yaml", "metrics.jsonl", "tracking.json"):
        assert f"demo/runs/{run}/{name}" in stored, stored
    final = f"demo/runs/{run}/step-000002/"
    assert {k.removeprefix(final) for k in stored if k.startswith(final)} >= {
        "meta.json",
        "model.pt",
        "rank-00000.pt",
        "rank-00001.pt",  # both ranks' parts, one checkpoint
    }
    assert f"sweeping its backbone in {s3_bucket}/demo/runs/{run}" in out
    assert "mlflow ui" in out
    summary = list((tmp_path / "finetune").glob("*/report/summary.md"))
    assert len(summary) == 1, out
    table = summary[0].read_text()
    assert "random" in table and "nan" not in table.lower()
    assert "all stages passed" in out
    assert "this teacher is a random, untrained image network" in out  # what the table can show
    assert "=== where to look ===" in out and "label_efficiency.png" in out
