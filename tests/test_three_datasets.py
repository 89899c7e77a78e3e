"""The README's "Three datasets, mixed by weight" commands: configs/multi.yaml is what it says, and
(slow) the commands themselves, as written in the README, synthesise the three layouts, shard the
six sources in one call and pretrain on the mix, with the realised shares in the run's metrics.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from hvdistill.config import RUN_SECTIONS, load_config
from hvdistill.data.shard_mix import shares
from tests.helpers import REPO_ROOT, config_path

SECTION = "### Three datasets, mixed by weight"
# the same commands at test size: smaller images and sweeps, two training steps
SMALL = {
    "synth": [
        "synth.frames_per_scene=2",
        "synth.image_width=320",
        "synth.image_height=180",
        "synth.lidar_points_per_beam=500",
        "synth.argoverse2.image_scale=0.1",
    ],
    "shard": ["--workers", "2", "--no-progress"],
    "pretrain": [
        "train.max_steps=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "data.epoch_samples=4",
        "data.loader_workers=1",
    ],
}


def readme_commands() -> list[list[str]]:
    """The command lines of the README's three-dataset block, comments dropped."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split(SECTION, 1)[1].split("```", 2)[1]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_multi_config_mixes_three_rigs_at_the_documented_shares():
    cfg = load_config(config_path("multi.yaml"), sections=RUN_SECTIONS["pretrain"])
    names = {s.name for s in cfg.data.sources}
    assert names == {"nuscenes", "semantickitti", "argoverse2"}
    assert {(s.name, s.split) for s in cfg.data.sources} == {
        (n, sp) for n in names for sp in ("train", "val")
    }
    weights = {s.name: s.weight for s in cfg.data.sources}
    assert shares(weights) == {"nuscenes": 0.5, "semantickitti": 0.25, "argoverse2": 0.25}
    assert all(s.lidar_origin == "sensor" for s in cfg.data.sources if s.name == "argoverse2")


def test_the_readme_block_is_synth_shard_pretrain_on_multi_yaml():
    commands = readme_commands()
    verbs = [c[1] for c in commands]
    assert verbs == ["synth", "synth", "synth", "shard", "pretrain"]
    formats = [c[c.index("--format") + 1] for c in commands[:3]]
    assert formats == ["nuscenes", "semantickitti", "argoverse2"]
    assert all("configs/multi.yaml" in c for c in commands)


@pytest.mark.slow
def test_the_readme_commands_pretrain_on_three_datasets(tmp_path):
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_ALLOW_FILE_STORE": "true"}
    for command in readme_commands():
        assert command[0] == "hvdistill"
        cmd = [sys.executable, "-m", "hvdistill.cli", *command[1:], *SMALL[command[1]]]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (" ".join(command), (done.stdout + done.stderr)[-4000:])
    manifest = json.loads((tmp_path / "data" / "shards-multi" / "manifest.json").read_text())
    datasets = {s["dataset"] for s in manifest["shards"]}
    assert datasets == {"nuscenes", "semantickitti", "argoverse2"} and not manifest["skipped"]
    (run,) = [p for p in (tmp_path / "runs" / "multi").iterdir() if p.name.startswith("pretrain-")]
    assert (run / "backbone.pt").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if any(k.startswith("data/share/") for k in line)]
    assert logged, lines[:3]
    for line in logged:
        total = sum(v for k, v in line.items() if k.startswith("data/share/"))
        assert total == pytest.approx(1.0)  # every delivered sample is one of the three datasets
