"""Malformed invocations of every verb, as a new user makes them: each ends with exit status 2, a
message and no traceback, and leaves nothing behind: no file or directory is created in the
watched tree (so no empty run directory and no escape through `../` or an absolute name) nor in
the checkout, and no file there is changed.

The verbs run in-process through `hvdistill.cli.main([...])` (the console script's own entry, with
its error boundary). HOME, the caches and the temporary directory point inside the test's
directory (libraries may fill their caches there: matplotlib's font list); the watched tree is
`<tmp>/a`, whose work directory sits two levels down (`<tmp>/a/b/work`) so that `../x` and
`../../y` land inside it. Cases that need the pretraining fixes of this change are
listed separately (`LEAD_CASES`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from hvdistill import cli
from tests.helpers import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
OUT = "finetune.output_dir={W}/out"
NO_SHARDS = "data.shards=[{W}/empty]"
TRAIN_OUT = "train.output_dir={W}/out"
SWEEP = ["sweep", TINY, "data.shards=[{W}/empty]", OUT, "sweep.label_fractions=[1.0]", "sweep.seeds=[0]"]
SUBMIT_ABS = ["train.output_dir=/mnt/shared/runs", "data.shards=[/mnt/shared/shards]"]
NOWHERE = "http://127.0.0.1:9"

# id -> argv ({W}: the work directory); every one must end with status 2, one message, nothing written
CASES: dict[str, list[str]] = {
    # config: bad keys, non-finite values, files that are not YAML configs
    "config-unknown-key": ["config", "show", TINY, "optim.lrr=0.1"],
    "config-nan": ["config", "show", TINY, "optim.lr=.nan"],
    "config-inf-and-type": ["config", "show", TINY, "loss.temperature=.inf", "train.epochs=abc"],
    "config-missing-file": ["config", "show", "{W}/missing.yaml"],
    "config-directory": ["config", "show", "{W}/empty"],
    "config-binary-file": ["config", "show", "{W}/binary.yaml"],
    "config-top-level-list": ["config", "show", "{W}/list.yaml"],
    "config-bad-index": ["config", "show", TINY, "data.sources.5.root=x"],
    # synth: outputs that are files, impossible worlds
    "synth-out-is-a-file": ["synth", "--out", "{W}/afile"],
    "synth-out-under-a-file": ["synth", "--out", "{W}/afile/world"],
    "synth-no-scenes": ["synth", "--out", "{W}/world", "synth.scenes=0"],
    "synth-nan-noise": ["synth", "--out", "{W}/world", "synth.lidar_range_noise=.nan"],
    "synth-no-out": ["synth", "synth.scenes=1"],
    # inspect, shard, teacher
    "inspect-missing-root": ["inspect", "--source", "nuscenes", "--root", "{W}/missing"],
    "shard-out-is-a-file": ["shard", "--out", "{W}/afile", "--config", TINY],
    "shard-bad-fraction": ["shard", "--out", "{W}/shards", "data.max_bad_fraction=2"],
    "teacher-nan-lr": ["teacher", "train", TINY, "teacher_train.lr=.nan"],
    "teacher-output-not-pt": ["teacher", "train", TINY, "teacher_train.output={W}/out/t.txt"],
    # pretrain (in-process and --ray): caught by the config
    "pretrain-nan-lr": ["pretrain", TINY, "optim.lr=.nan", TRAIN_OUT],
    "pretrain-run-name-escapes": ["pretrain", TINY, "train.run_name=../x", TRAIN_OUT],
    "pretrain-run-name-absolute": ["pretrain", TINY, "train.run_name={W}/abs", TRAIN_OUT],
    "pretrain-negative-temperature": ["pretrain", TINY, "loss.temperature=-1", TRAIN_OUT],
    # (tracking off: the data failure is the point, and opening an MLflow store costs seconds)
    "pretrain-empty-shards": [
        "pretrain",
        TINY,
        NO_SHARDS,
        TRAIN_OUT,
        "train.run_name=p",
        "tracking.enabled=false",
    ],
    "pretrain-missing-shards": [
        "pretrain",
        TINY,
        "data.shards=[{W}/missing]",
        TRAIN_OUT,
        "tracking.enabled=false",
    ],
    "pretrain-ray-inf-lr": ["pretrain", TINY, "optim.lr=.inf", TRAIN_OUT, "--ray"],
    "pretrain-ray-missing-config": ["pretrain", "{W}/missing.yaml", "--ray"],
    # finetune: escaping names, wrong kinds of path, bad numbers, unreadable backbones
    "finetune-run-name-escapes": ["finetune", TINY, NO_SHARDS, OUT, "finetune.run_name=../x"],
    "finetune-run-name-absolute": ["finetune", TINY, NO_SHARDS, OUT, "finetune.run_name={W}/abs"],
    "finetune-output-is-a-file": ["finetune", TINY, NO_SHARDS, "finetune.output_dir={W}/afile"],
    "finetune-output-under-a-file": ["finetune", TINY, NO_SHARDS, "finetune.output_dir={W}/afile/runs"],
    "finetune-nan-lr": ["finetune", TINY, NO_SHARDS, OUT, "finetune.lr_trunk=.nan"],
    "finetune-fraction-not-1-over-k": ["finetune", TINY, NO_SHARDS, OUT, "finetune.label_fraction=0.3"],
    "finetune-empty-shards": ["finetune", TINY, NO_SHARDS, OUT],
    "finetune-missing-shards": ["finetune", TINY, "data.shards=[{W}/missing]", OUT],
    "finetune-no-shards": ["finetune", TINY, OUT],
    "finetune-text-backbone": ["finetune", TINY, NO_SHARDS, OUT, "finetune.backbone={W}/textbb"],
    "finetune-truncated-backbone": ["finetune", TINY, NO_SHARDS, OUT, "finetune.backbone={W}/truncbb"],
    "finetune-backbone-run-escapes": ["finetune", TINY, NO_SHARDS, OUT, "finetune.backbone=runs:/../../x"],
    # sweep: names, fractions, tracking, inputs
    "sweep-name-escapes": [*SWEEP, "sweep.name=../../y"],
    "sweep-name-absolute": [*SWEEP, "sweep.name={W}/abs"],
    "sweep-fraction-zero": [*SWEEP, "sweep.label_fractions=[0]"],
    "sweep-fraction-not-1-over-k": [*SWEEP, "sweep.label_fractions=[0.3]"],
    "sweep-without-tracking": [*SWEEP, "tracking.enabled=false"],
    "sweep-empty-shards": [*SWEEP, "sweep.name=s"],
    "sweep-missing-checkpoint": [*SWEEP, "sweep.checkpoints=[{W}/missing-run]", "sweep.name=s"],
    # report: missing, damaged, unknown stores
    "report-missing-dir": ["report", "{W}/missing"],
    "report-truncated-sweep-json": ["report", "{W}/sweepdir"],
    "report-missing-store": ["report", "0123abcd", "--tracking-uri", "sqlite:///{W}/none.db"],
    "report-file-not-a-sweep": ["report", "{W}/afile"],
    # study
    "study-probe-fraction": ["study", TINY, "study.probe_fractions=[0.3]", "--out", "{W}/study"],
    "study-out-is-a-file": ["study", TINY, "--out", "{W}/afile"],
    "study-tag-escapes": ["study", TINY, "study.tag=../x", "--out", "{W}/study"],
    # submit: relative paths, denied env names, bad fractions, no cluster
    "submit-relative-paths": ["submit", "pretrain", TINY, "--address", NOWHERE],
    "submit-ld-preload": [
        "submit",
        "pretrain",
        TINY,
        *SUBMIT_ABS,
        "--no-upload",
        "--env",
        "LD_PRELOAD=/x.so",
    ],
    "submit-sweep-fraction": ["submit", "sweep", TINY, "data.shards=[/s]", "sweep.label_fractions=[0]"],
    "submit-no-cluster": ["submit", "status", "raysubmit_x"],
    # demo, unknown verbs
    "demo-out-is-a-file": ["demo", "--out", "{W}/afile"],
    "demo-nan": ["demo", "--config", TINY, "optim.lr=.nan", "--out", "{W}/demo"],
    "unknown-verb": ["confg", "show"],
}

# Pretraining failures that need a prepared run directory; each case prepares what it resumes
# (`prepare_lead_case`) and may change files only under `allowed` (the run directory it resumes,
# relative to the work directory).
#   truncated checkpoint: the run's only checkpoint is damaged -> one line naming it and
#     train.resume (with an older intact one it falls back to it, with a warning)
#   truncated tracking.json: no traceback (a warning at most); the run then stops on its empty
#     shards (status 2)
#   empty shards with a new train.output_dir: no run directory and no output folder left behind
LEAD_CASES: dict[str, tuple[list[str], str]] = {
    "pretrain-truncated-checkpoint": (
        [
            "pretrain",
            TINY,
            "data.shards=[{S}]",
            TRAIN_OUT,
            "train.run_name=damaged",
            "tracking.enabled=false",
        ],
        "out/damaged",
    ),
    "pretrain-truncated-tracking-json": (
        ["pretrain", TINY, NO_SHARDS, TRAIN_OUT, "train.run_name=tj"],
        "out/tj",
    ),
    "pretrain-empty-shards-new-output-dir": (
        ["pretrain", TINY, NO_SHARDS, "train.output_dir={W}/new/runs", "train.run_name=p"],
        "",
    ),
}


def sandbox(tmp_path: Path) -> Path:
    """The work directory and what the cases point at: an empty dir, a file, files that are not
    configs, backbones that are not checkpoints, a damaged sweep directory, an output dir."""
    work = tmp_path / "a" / "b" / "work"
    for d in ("empty", "out", "textbb", "truncbb", "sweepdir"):
        (work / d).mkdir(parents=True)
    (work / "afile").write_text("not a directory\n")
    (work / "binary.yaml").write_bytes(b"\xff\xfe\x00optim: {lr: 1}\n")
    (work / "list.yaml").write_text("- optim\n- lr\n")
    (work / "text.pth").write_text("hello\n")
    (work / "textbb" / "backbone.pt").write_text("hello\n")
    torch.save({"w": torch.zeros(64)}, work / "truncbb" / "backbone.pt")
    data = (work / "truncbb" / "backbone.pt").read_bytes()
    (work / "truncbb" / "backbone.pt").write_bytes(data[: len(data) // 2])
    (work / "sweepdir" / "sweep.json").write_text('{"parent_run_id": ')
    return work


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with (size, mtime_ns): what a case may not add to or change."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path)] = (st.st_size if path.is_file() else 0, st.st_mtime_ns if path.is_file() else 0)
    return found


def outside_snapshot() -> set[str]:
    """The checkout's top level and its usual output folders: cases must not add anything there."""
    names = set(os.listdir(REPO_ROOT))
    for sub in ("runs", "demo-output", "study-output", "report"):
        if (REPO_ROOT / sub).is_dir():
            names |= {f"{sub}/{n}" for n in os.listdir(REPO_ROOT / sub)}
    return names


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The sandboxed work directory as cwd, with HOME, caches and temporary files inside tmp_path."""
    work = sandbox(tmp_path)
    for name in ("home", "cache", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HVDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "cache" / "matplotlib"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", cli.TRACEBACK_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(work)
    return work


def run_case(argv: list[str], work: Path, capfd, allowed: str = "", **paths: str) -> str:
    """Run one invocation; assert status 2, no traceback, nothing created or changed (but under
    `allowed`, a directory relative to the work directory); return its output."""
    argv = [a.format(W=work, **paths) for a in argv]
    root = work.parents[1]  # <tmp>/a: the work directory and where `..` leads
    before, outside = snapshot(root), outside_snapshot()
    code = cli.main(argv)
    out, err = capfd.readouterr()
    text = out + err
    assert code == 2, f"{argv}: exit {code}\n{text[-3000:]}"
    assert "Traceback" not in text, f"{argv}:\n{text[-3000:]}"
    assert err.strip(), f"{argv}: no message on stderr"
    after = snapshot(root)
    free = str(work / allowed) if allowed else None

    def watched(paths: set[str]) -> list[str]:
        return sorted(p for p in paths if free is None or not (p == free or p.startswith(free + os.sep)))

    assert not watched(set(after) - set(before)), f"{argv} created {watched(set(after) - set(before))}"
    assert not watched(set(before) - set(after)), f"{argv} removed {watched(set(before) - set(after))}"
    changed = watched({p for p in before if p in after and before[p] != after[p] and Path(p).is_file()})
    assert not changed, f"{argv} changed {changed}"
    assert outside_snapshot() == outside, f"{argv} wrote into the checkout"
    return text


def test_there_are_at_least_forty_cases_over_every_verb():
    assert len(CASES) >= 40
    assert {argv[0] for argv in CASES.values()} >= set(cli.VERBS)


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_invocation_ends_with_one_message_and_leaves_nothing(case, work, capfd):
    run_case(CASES[case], work, capfd)


@pytest.mark.parametrize("case", list(LEAD_CASES))
def test_lead_pretraining_failures_end_with_one_message(case, work, capfd, lead_shards):
    argv, allowed = LEAD_CASES[case]
    prepare_lead_case(case, work)
    text = run_case(argv, work, capfd, allowed, S=str(lead_shards))
    if case == "pretrain-truncated-checkpoint":
        assert "step-000010" in text and "train.resume" in text


@pytest.fixture(scope="module")
def lead_shards(nuscenes_root, tmp_path_factory) -> Path:
    """Shards of the session's nuScenes world (what a pretraining reads)."""
    from tests.eval.helpers import write_labelled_shards

    return write_labelled_shards(tmp_path_factory.mktemp("fuzz-shards"), {"nuscenes": nuscenes_root})


def prepare_lead_case(case: str, work: Path) -> None:
    """The damaged run directory a LEAD case resumes: its only checkpoint with a truncated
    meta.json, or a truncated tracking.json."""
    if case == "pretrain-truncated-checkpoint":
        step = work / "out" / "damaged" / "checkpoints" / "step-000010"
        step.mkdir(parents=True)
        (step / "meta.json").write_text('{"format": "hvdistill-checkpoint/1", "files": {')
        (step / "model.pt").write_bytes(b"PK\x03\x04")
    elif case == "pretrain-truncated-tracking-json":
        (work / "out" / "tj").mkdir(parents=True)
        (work / "out" / "tj" / "tracking.json").write_text('{"run_id": ')
