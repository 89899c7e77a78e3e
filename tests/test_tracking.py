"""MLflow tracking against real stores: sqlite files in tmp_path, and one real `mlflow server` (slow).

Every run is written by hvdistill.tracking and read back both through its reading helpers and,
where it matters, through MLflow's own client, so a helper cannot agree with itself by mistake.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvdistill.config import ConfigError, TrackingConfig, load_config
from hvdistill.tracking import (
    CHANGED_PARAM_PREFIX,
    DB_NAME,
    MlflowTracker,
    NullTracker,
    artifact_paths,
    child_runs,
    download_artifact,
    metric_history,
    prepare_tracking,
    run_record,
    start_tracker,
    tracking_uri,
    ui_command,
)
from hvdistill.tracking_values import default_tags
from tests.helpers import REPO_ROOT

METRICS = ("loss/total", "loss/ipv", "loss/depth", "loss/bev", "lr", "grad_norm", "samples_per_s")


def _mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _run_dir(tmp_path: Path, name: str = "run-1") -> Path:
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    return run_dir


def test_import_is_lazy_and_the_null_tracker_needs_no_mlflow(tmp_path):
    code = f"""
import sys
from pathlib import Path
from hvdistill.config import TrackingConfig
from hvdistill.tracking import NullTracker, prepare_tracking, start_tracker
run_dir = Path({str(tmp_path)!r})
off = TrackingConfig(enabled=False)
assert prepare_tracking(off, run_dir) == ""
on = TrackingConfig()
trackers = [start_tracker(off, run_dir, is_main=True), start_tracker(on, run_dir, is_main=False)]
for t in trackers:
    assert isinstance(t, NullTracker) and t.run_id is None
    with t:
        t.log_params({{"a": 1}}); t.log_metrics({{"loss/total": 1.0}}, step=3); t.set_tags({{"k": "v"}})
        t.log_artifact(Path("missing")); t.log_dict({{"a": 1}}, "a.json"); t.log_text("x", "x.txt")
assert "mlflow" not in sys.modules, "mlflow was imported"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert list(tmp_path.iterdir()) == []  # no store created
    with pytest.raises(ValueError, match="status"):
        NullTracker().end("DONE")


def test_uri_defaults_to_sqlite_in_the_run_dir_and_paths_become_absolute(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "r"
    assert tracking_uri(TrackingConfig(), run_dir) == f"sqlite:///{tmp_path}/runs/r/{DB_NAME}"
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingConfig(uri="sqlite:///db/m.db"), run_dir) == f"sqlite:///{tmp_path}/db/m.db"
    assert tracking_uri(TrackingConfig(uri="http://127.0.0.1:5000"), run_dir) == "http://127.0.0.1:5000"
    uri = f"sqlite:///{tmp_path}/a b/mlruns.db"
    assert ui_command(uri) == f"mlflow ui --backend-store-uri '{uri}' --host 127.0.0.1 --port 5000"
    assert ui_command("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_config_refuses_a_store_mlflow_would_refuse():
    with pytest.raises(ConfigError, match="tracking.uri") as err:
        load_config(None, ["tracking.uri=mlruns", "tracking.experiment= "], ("tracking",))
    assert "tracking.experiment" in str(err.value)
    assert load_config(None, ["tracking.uri=http://127.0.0.1:5000"], ("tracking",)).tracking.uri.startswith(
        "http"
    )


def test_prepare_creates_the_store_and_experiment_once_beside_its_artifacts(tmp_path):
    cfg = TrackingConfig(experiment="pretrain")
    run_dir = _run_dir(tmp_path)
    uri = prepare_tracking(cfg, run_dir)
    assert uri == tracking_uri(cfg, run_dir) and (run_dir / DB_NAME).is_file()
    assert prepare_tracking(cfg, run_dir) == uri  # idempotent
    exps = [e for e in _mlflow_client(uri).search_experiments() if e.name == "pretrain"]
    assert len(exps) == 1 and exps[0].artifact_location == str(run_dir / "mlartifacts")
    assert not list(run_dir.glob(".*.tmp"))  # the temporary copy is gone


def test_params_are_batched_and_long_values_truncated_visibly_with_the_full_text_kept(tmp_path):
    run_dir = _run_dir(tmp_path)
    params = {f"p.{i:03d}": i * 0.5 for i in range(250)}  # > 100, MLflow's per-call limit
    params |= {"data.cameras": ["CAM_FRONT", "CAM_BACK"], "flag": True, "long": "x" * 7000}
    with start_tracker(TrackingConfig(), run_dir, is_main=True, run_name="r1") as tracker:
        assert isinstance(tracker, MlflowTracker)
        tracker.log_params(params)
    rec = run_record(tracker.uri, tracker.run_id)
    assert rec["run_name"] == "r1" and rec["status"] == "FINISHED"
    assert len(rec["params"]) == 253 and rec["params"]["p.249"] == "124.5"
    assert rec["params"]["data.cameras"] == '["CAM_FRONT", "CAM_BACK"]' and rec["params"]["flag"] == "True"
    long = rec["params"]["long"]
    assert len(long) == 6000 and long.endswith("...[truncated: 7000 chars]")
    full = download_artifact(tracker.uri, tracker.run_id, "params_truncated/long.txt", tmp_path / "dl")
    assert full.read_text() == "x" * 7000


def test_system_metrics_are_sampled_into_the_run_until_it_ends(tmp_path):
    run_dir = _run_dir(tmp_path)
    cfg = TrackingConfig(system_metrics=True, system_metrics_interval=0.2)
    with start_tracker(cfg, run_dir, is_main=True) as tracker:
        time.sleep(1.5)
    keys = set(_mlflow_client(tracker.uri).get_run(tracker.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, keys
    assert run_record(tracker.uri, tracker.run_id)["status"] == "FINISHED"  # the sampler was stopped


def test_metrics_with_steps_artifacts_and_tags(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "config.yaml").write_text("train:\n  seed: 0\n")
    (run_dir / "ckpt").mkdir()
    (run_dir / "ckpt" / "meta.json").write_text("{}")
    tags = default_tags(world_size=2)
    with start_tracker(TrackingConfig(), run_dir, is_main=True, tags=tags) as tracker:
        for step in (10, 20, 30):
            tracker.log_metrics({k: step + i / 10 for i, k in enumerate(METRICS)}, step=step)
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(run_dir / "ckpt", artifact_path="checkpoint")
        tracker.log_dict({"zero_optimization": {"stage": 2}}, "deepspeed.json")
        tracker.log_text("ab12", "manifest_hash.txt")
        tracker.set_tags({"extra": "1"})
        with pytest.raises(FileNotFoundError):
            tracker.log_artifact(run_dir / "nothing")
    uri, run_id = tracker.uri, tracker.run_id
    assert metric_history(uri, run_id, "loss/total") == [(10, 10.0), (20, 20.0), (30, 30.0)]
    assert metric_history(uri, run_id, "lr") == [(s, s + 4 / 10) for s in (10, 20, 30)]
    assert artifact_paths(uri, run_id) == [
        "checkpoint/meta.json",
        "config.yaml",
        "deepspeed.json",
        "manifest_hash.txt",
    ]
    got = download_artifact(uri, run_id, "deepspeed.json", tmp_path / "dl")
    assert got.read_text().replace(" ", "").replace("\n", "") == '{"zero_optimization":{"stage":2}}'
    run = _mlflow_client(uri).get_run(run_id)  # MLflow's own view of the same run
    assert run.data.metrics["samples_per_s"] == pytest.approx(30.6)
    assert run.data.tags["world_size"] == "2" and run.data.tags["extra"] == "1"
    assert run.data.tags["hardware.cpu"] and run.data.tags["torch.version"]
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the package is installed from this checkout
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_a_resumed_run_continues_the_same_run_and_its_metric_history(tmp_path):
    run_dir = _run_dir(tmp_path)
    cfg = TrackingConfig()
    params = {"train.max_steps": 10, "optim.lr": 0.5}
    with pytest.raises(RuntimeError), start_tracker(cfg, run_dir, is_main=True) as first:
        first.log_params(params)
        for step in range(5):
            first.log_metrics({"loss/total": 10.0 - step}, step=step)
        raise RuntimeError("worker lost")
    assert run_record(first.uri, first.run_id)["status"] == "FAILED"
    with start_tracker(cfg, run_dir, is_main=True, resume_run_id=first.run_id) as second:
        assert second.run_id == first.run_id
        assert run_record(second.uri, second.run_id)["status"] == "RUNNING"
        second.log_params(params | {"train.max_steps": 20})  # same values skipped, a changed one tagged
        for step in range(5, 10):
            second.log_metrics({"loss/total": 10.0 - step}, step=step)
    rec = run_record(second.uri, second.run_id)
    assert rec["status"] == "FINISHED" and rec["tags"]["hvdistill.resumes"] == "1"
    assert rec["params"]["train.max_steps"] == "10"  # MLflow keeps the first value
    assert rec["tags"][CHANGED_PARAM_PREFIX + "train.max_steps"] == "20"
    history = metric_history(second.uri, second.run_id, "loss/total")
    assert history == [(s, 10.0 - s) for s in range(10)]
    assert len(_mlflow_client(second.uri).search_runs([rec["experiment_id"]])) == 1


def test_resuming_a_run_the_store_lacks_starts_a_new_tagged_run(tmp_path, caplog):
    missing = "0123456789abcdef0123456789abcdef"
    with start_tracker(TrackingConfig(), _run_dir(tmp_path), is_main=True, resume_run_id=missing) as t:
        pass
    assert t.run_id != missing and "cannot resume" in caplog.text
    assert run_record(t.uri, t.run_id)["tags"]["hvdistill.resumed_from"] == missing


def test_child_runs_of_a_sweep_parent_are_listed_with_their_params_and_metrics(tmp_path):
    sweep_dir = _run_dir(tmp_path, "sweep")
    cfg = TrackingConfig(experiment="sweeps")
    uri = prepare_tracking(cfg, sweep_dir)
    with start_tracker(cfg, sweep_dir, is_main=True, run_name="sweep") as parent:
        for frac in (0.01, 0.1):
            other = TrackingConfig(experiment="elsewhere")  # children follow the parent's experiment
            with start_tracker(other, sweep_dir, is_main=True, parent_run_id=parent.run_id) as child:
                child.log_params({"sweep.fraction": frac})
                child.log_metrics({"val/miou": 50 * frac}, step=1)
                child.log_text("table", "per_class.md")
        with start_tracker(cfg, sweep_dir, is_main=True):  # an unrelated run in the same experiment
            pass
    kids = child_runs(uri, parent.run_id)
    assert [k["params"]["sweep.fraction"] for k in kids] == ["0.01", "0.1"]
    assert [k["metrics"]["val/miou"] for k in kids] == [0.5, 5.0]
    assert {k["parent_run_id"] for k in kids} == {parent.run_id}
    assert {k["experiment_id"] for k in kids} == {run_record(uri, parent.run_id)["experiment_id"]}
    assert artifact_paths(uri, kids[0]["run_id"]) == ["per_class.md"]
    assert child_runs(uri, kids[0]["run_id"]) == []
    with pytest.raises(LookupError, match="no run"):
        child_runs(uri, "0" * 32)
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        child_runs(f"sqlite:///{tmp_path}/absent.db", parent.run_id)


def test_metrics_the_store_refuses_are_dropped_and_counted_but_bad_names_raise(tmp_path, caplog):
    tracker = start_tracker(TrackingConfig(), _run_dir(tmp_path), is_main=True)
    for bad in ("../escape", "a//b", "x" * 251, "loss?"):
        with pytest.raises(ValueError, match="metric name"):
            tracker.log_metrics({bad: 1.0}, step=0)
    with pytest.raises((TypeError, ValueError)):
        tracker.log_metrics({"loss/total": "high"}, step=0)
    tracker.log_metrics({"loss/total": 1.0, "val/loss/total": 2.0}, step=0)  # what the loop logs passes
    _mlflow_client(tracker.uri).delete_run(tracker.run_id)  # the store now refuses this run
    for step in range(1, 4):
        tracker.log_metrics({"loss/total": 1.0}, step=step)
    assert tracker.dropped_metric_batches == 3
    assert caplog.text.count("not logged") == 2  # warned at 1 and 2 dropped, quiet at 3


@pytest.mark.slow  # two fresh interpreters importing mlflow: ~13 s on two loaded cores
def test_two_processes_creating_one_new_store_at_once_both_succeed(tmp_path):
    code = """
import sys
from pathlib import Path
from hvdistill.config import TrackingConfig
from hvdistill.tracking import prepare_tracking, start_tracker
cfg = TrackingConfig()
prepare_tracking(cfg, Path(sys.argv[1]))
with start_tracker(cfg, Path(sys.argv[1]), is_main=True) as t:
    t.log_metrics({"loss/total": 1.0}, step=0)
"""
    run_dir = tmp_path / "shared"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=REPO_ROOT, stderr=subprocess.PIPE)
        for _ in "ab"
    ]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    client = _mlflow_client(tracking_uri(TrackingConfig(), run_dir))
    assert len(client.search_runs([client.get_experiment_by_name("hvdistill").experiment_id])) == 2


@pytest.mark.slow  # two sqlite migrations from scratch: 7-9 s each on two loaded cores
def test_new_stores_are_copies_of_a_template_migrated_once_per_mlflow_version(tmp_path, monkeypatch, caplog):
    import mlflow

    cache = tmp_path / "cache"
    monkeypatch.setenv("HVDISTILL_CACHE_DIR", str(cache))
    first, second = (prepare_tracking(TrackingConfig(), _run_dir(tmp_path, n)) for n in ("a", "b"))
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    assert [p.name for p in cache.iterdir()] == [template.name]  # made once, no temporaries left
    for uri in (first, second):
        with start_tracker(TrackingConfig(), Path(uri.removeprefix("sqlite:///")).parent, is_main=True) as t:
            t.log_metrics({"loss/total": 1.0}, step=0)
    assert len(_mlflow_client(second).search_runs(["0"])) == 0  # copies do not share runs
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("HVDISTILL_CACHE_DIR", str(tmp_path / "not-a-dir"))  # unusable cache
    uri = prepare_tracking(TrackingConfig(), _run_dir(tmp_path, "c"))
    assert "no store template" in caplog.text and Path(uri.removeprefix("sqlite:///")).is_file()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend; its URI. Stopped afterwards."""
    from tests.helpers.mlflow_server import mlflow_server as server

    with server(tmp_path / "server") as uri:
        yield uri


@pytest.mark.slow
def test_a_run_logged_to_an_mlflow_server(tmp_path, mlflow_server):
    cfg = TrackingConfig(uri=mlflow_server, experiment="remote")
    run_dir = _run_dir(tmp_path)
    assert prepare_tracking(cfg, run_dir) == mlflow_server
    assert not (run_dir / DB_NAME).exists()  # nothing local for a server store
    (run_dir / "backbone.pt").write_bytes(b"\x00" * 1000)
    with start_tracker(cfg, run_dir, is_main=True, run_name="remote-run") as parent:
        parent.log_params({f"k{i}": i for i in range(150)})
        parent.log_metrics({"loss/total": 2.0}, step=1)
        parent.log_artifact(run_dir / "backbone.pt")
        with start_tracker(cfg, run_dir, is_main=True, parent_run_id=parent.run_id) as child:
            child.log_metrics({"val/miou": 3.0}, step=2)
    rec = run_record(mlflow_server, parent.run_id)
    assert rec["status"] == "FINISHED" and len(rec["params"]) == 150
    assert rec["artifact_uri"].startswith("mlflow-artifacts:")  # proxied through the server
    assert metric_history(mlflow_server, parent.run_id, "loss/total") == [(1, 2.0)]
    assert [k["run_id"] for k in child_runs(mlflow_server, parent.run_id)] == [child.run_id]
    got = download_artifact(mlflow_server, parent.run_id, "backbone.pt", tmp_path / "dl")
    assert got.read_bytes() == b"\x00" * 1000
    assert list((tmp_path / "server" / "artifacts").rglob("backbone.pt"))  # stored by the server
    with start_tracker(cfg, run_dir, is_main=True, resume_run_id=parent.run_id) as again:
        again.log_metrics({"loss/total": 1.0}, step=2)
    assert metric_history(mlflow_server, parent.run_id, "loss/total") == [(1, 2.0), (2, 1.0)]
