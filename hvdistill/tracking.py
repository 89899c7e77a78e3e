"""Experiment tracking with MLflow: one run per pretraining, resumable, nestable under a sweep's parent run.

The only module that imports mlflow, and only inside functions: `import mlflow` costs seconds, so
code that never tracks (non-main ranks, `tracking.enabled=false`) never pays for it.

- `start_tracker` gives rank 0 an `MlflowTracker` and every other rank (or any rank when tracking
  is off) a `NullTracker`; both implement `Tracker`. The tracker talks to MLflow through its own
  `MlflowClient`, never the process-global `mlflow.start_run` stack, so several trackers, threads
  and Ray Train worker processes do not share state.
- The store is `tracking.uri`, or `sqlite:///<run dir>/mlruns.db` when it is empty
  (`tracking_uri`). `prepare_tracking` creates the database and the experiment once, in the
  driver or on rank 0, before other processes open it (MLflow crashes when two processes migrate
  a brand-new sqlite file at once). A new database is copied from a migrated empty template cached
  per MLflow version (migrating one takes 7-9 s on two cores, copying it milliseconds).
- Params are strings of at most MLflow's limit (6000 characters in 3.17); longer ones are cut
  with a visible marker and their full text is logged as `params_truncated/<key>.txt`. A resumed
  run skips params it already holds and records a changed value as tag `param_changed.<key>`.
- Metric names and values are checked before they are sent; a batch the store then refuses (a
  lost server, a deleted run) is dropped with a warning and counted: a long run does not die for
  its record. Every other call raises.
- `resume_run_id` continues a run (status back to RUNNING, tag `hvdistill.resumes` counted);
  `parent_run_id` nests a child run (tag `mlflow.parentRunId`) in the parent's experiment.
  `child_runs`, `run_record`, `metric_history`, `artifact_paths` and `download_artifact` read
  runs back (a sweep report regenerates its tables from MLflow alone); `log_files` adds artifacts
  to an existing run without touching its status (a report on a FAILED sweep leaves it FAILED).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvdistill.config import TrackingConfig
from hvdistill.tracking_values import (
    check_metric_name,
    chunks,
    param_value,
    truncated,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
DB_NAME = "mlruns.db"  # the default store's file in the run directory
ARTIFACT_DIR = "mlartifacts"  # beside a sqlite store: its experiments' artifacts
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI groups children under it)
RESUMES_TAG = "hvdistill.resumes"
RESUMED_FROM_TAG = "hvdistill.resumed_from"
CHANGED_PARAM_PREFIX = "param_changed."
TRUNCATED_DIR = "params_truncated"
_RUN_ID = re.compile(r"[0-9A-Za-z_-]+")


class Tracker(ABC):
    """What a run logs to. Use as a context manager: leaving it ends the run with the right status."""

    run_id: str | None = None
    uri: str = ""

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    @abstractmethod
    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None: ...

    @abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None: ...

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def end(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


class NullTracker(Tracker):
    """Drops everything: non-main ranks, and every rank when `tracking.enabled` is false."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        _check_status(status)


class MlflowTracker(Tracker):
    """One MLflow run, written through its own client; calls are serialised by a lock."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._ended = False
        self.run_id = run_id
        self.uri = uri
        self.dropped_metric_batches = 0
        self._monitor: Any = None  # mlflow's system-metrics sampler (`tracking.system_metrics`)

    def start_system_metrics(self, interval_s: float, resumed: bool) -> None:
        """Sample CPU, memory, disk, network (and GPU where pynvml is installed) into this run every
        `interval_s` seconds from a thread of this process, until `end`; a resumed run continues
        the step count of its earlier samples."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=interval_s,
            samples_before_logging=1,
            resume_logging=resumed,
            tracking_uri=self.uri,
        )
        self._monitor.start()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        full = {k: param_value(v) for k, v in params.items()}
        stored = {k: truncated(v, MAX_PARAM_VAL_LENGTH) for k, v in full.items()}
        with self._lock:
            existing = self._client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in stored.items() if k not in existing]
            for batch in chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(self.run_id, params=batch)
            for k, v in full.items():
                if k not in existing and v != stored[k]:
                    self._client.log_text(self.run_id, v, f"{TRUNCATED_DIR}/{k}.txt")
        changed = {k: v for k, v in stored.items() if k in existing and existing[k] != v}
        if changed:
            log.warning(
                "tracking: params changed since the run started (MLflow keeps the first): %s", changed
            )
            self.set_tags({CHANGED_PARAM_PREFIX + k: v for k, v in changed.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH

        for key in metrics:
            check_metric_name(key, MAX_ENTITY_KEY_LENGTH)
        stamp = int(time.time() * 1000)
        entries = [Metric(k, float(v), stamp, int(step)) for k, v in metrics.items()]
        with self._lock:
            try:
                for batch in chunks(entries, MAX_METRICS_PER_BATCH):
                    self._client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # names and values were checked: the store failed (lost, run deleted)
                self.dropped_metric_batches += 1
                n = self.dropped_metric_batches
                if n & (n - 1) == 0:  # warn at 1, 2, 4, 8, ... dropped batches
                    log.warning(
                        "tracking: metrics of step %d not logged (%s); %d batch(es) dropped", step, e, n
                    )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tracking: no artifact to log at {path}")
        with self._lock:
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        with self._lock:
            self._client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._lock:
            self._client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        entries = [RunTag(k, truncated(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        with self._lock:
            for batch in chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=batch)

    def end(self, status: str = "FINISHED") -> None:
        _check_status(status)
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._monitor is not None:
                self._monitor.finish()
            self._client.set_terminated(self.run_id, status)
        if self.dropped_metric_batches:
            log.warning(
                "tracking: run %s ended with %d metric batch(es) not logged",
                self.run_id,
                self.dropped_metric_batches,
            )


def tracking_uri(cfg: TrackingConfig, run_dir: Path) -> str:
    """The store's URI: `tracking.uri`, or `sqlite:///<run_dir>/mlruns.db`; sqlite paths made absolute.

    Absolute because Ray Train workers run in another working directory than the driver.
    """
    if not cfg.uri:
        return "sqlite:///" + str((Path(run_dir) / DB_NAME).resolve())
    path, query = _sqlite_path(cfg.uri)
    if path is None or path.is_absolute():
        return cfg.uri
    return "sqlite:///" + str(path.resolve()) + query


def prepare_tracking(cfg: TrackingConfig, run_dir: Path) -> str:
    """Create the store (a sqlite file) and the experiment once; the URI, or "" when tracking is off.

    Call it in the driver (or on rank 0 before the others start), then start trackers anywhere.
    """
    if not cfg.enabled:
        return ""
    uri = tracking_uri(cfg, run_dir)
    _experiment_id(_client(uri, create=True), cfg, uri)
    return uri


def start_tracker(
    cfg: TrackingConfig,
    run_dir: Path,
    *,
    is_main: bool,
    resume_run_id: str | None = None,
    run_name: str = "",
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Tracker:
    """The run's tracker: MLflow on the main rank when tracking is on, a NullTracker otherwise.

    `resume_run_id` continues that run (a warning and a new run, tagged `hvdistill.resumed_from`,
    when the store does not hold it); `parent_run_id` makes the new run a child of that run, in
    its experiment. The MLflow run name is `tracking.run_name`, else `run_name`, else MLflow's.
    """
    if not (cfg.enabled and is_main):
        return NullTracker()
    uri = tracking_uri(cfg, run_dir)
    client = _client(uri, create=True)
    run_id = _reopen(client, resume_run_id, uri) if resume_run_id else None
    if run_id is None:
        birth: dict[str, str] = {}  # tags the run is created with, never missing from it
        if resume_run_id:
            birth[RESUMED_FROM_TAG] = resume_run_id
        if parent_run_id:
            experiment_id = _get_run(client, parent_run_id, uri).info.experiment_id
            birth[PARENT_TAG] = parent_run_id
        else:
            experiment_id = _experiment_id(client, cfg, uri)
        name = cfg.run_name or run_name or None
        run_id = client.create_run(experiment_id, run_name=name, tags=birth).info.run_id
    tracker = MlflowTracker(client, run_id, uri)
    tracker.set_tags(tags or {})
    if cfg.system_metrics:
        tracker.start_system_metrics(cfg.system_metrics_interval, resumed=run_id == resume_run_id)
    return tracker


def ui_command(uri: str, port: int = 5000) -> str:
    """The exact command that shows the store in a browser; for a server URI, the URI itself."""
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port {port}"


def run_record(uri: str, run_id: str) -> dict[str, Any]:
    """One run as a plain dict: ids, name, status, times (ms), params, latest metrics, tags."""
    return _record(_get_run(_client(uri), run_id, uri))


def child_runs(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Every child run of `parent_run_id` (deleted ones left out), oldest first, as `run_record`s."""
    client = _client(uri)
    parent = _get_run(client, parent_run_id, uri)
    query = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], query, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs += page
        token = page.token
        if not token:
            return [_record(r) for r in runs]


def log_files(uri: str, run_id: str, paths: Sequence[Path], artifact_path: str | None = None) -> None:
    """Log files as artifacts of an existing run, leaving its status (FINISHED, FAILED, ...) as it is."""
    client = _client(uri)
    _get_run(client, run_id, uri)  # a clear error for an unknown run
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"tracking: no artifact to log at {path}")
        client.log_artifact(run_id, str(path), artifact_path)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged value of metric `key` as (step, value), in step then logging order."""
    history = _client(uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


def artifact_paths(uri: str, run_id: str) -> list[str]:
    """The run's artifact files, as paths relative to its artifact root."""
    client = _client(uri)
    found: list[str] = []
    pending: list[str | None] = [None]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop()):
            (pending if item.is_dir else found).append(item.path)
    return sorted(found)


def download_artifact(uri: str, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
    """Copy one artifact (file or folder) of the run into `dst_dir` (a file lands there by its base
    name); its local path. No progress bar: callers download many small files."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    local = _client(uri).download_artifacts(run_id, artifact_path, str(dst_dir))
    return Path(local)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"tracking: run status {status!r} is not one of {STATUSES}")


def _sqlite_path(uri: str) -> tuple[Path | None, str]:
    """(database path, "?query" or "") of a `sqlite:///` URI; (None, "") for any other store."""
    if not uri.startswith("sqlite:///"):
        return None, ""
    path, sep, query = uri[len("sqlite:///") :].partition("?")
    return Path(path), sep + query


def _client(uri: str, *, create: bool = False) -> MlflowClient:
    """A client of the store; a missing sqlite file is created when `create`, else an error."""
    from mlflow import MlflowClient

    path, _ = _sqlite_path(uri)
    if path is not None and not path.exists():
        if not create:
            raise FileNotFoundError(f"tracking: no MLflow store at {path} ({uri})")
        _create_sqlite_db(path)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, cfg: TrackingConfig, uri: str) -> str:
    """The id of experiment `tracking.experiment`, created (with its artifact location) if missing."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        try:
            return client.create_experiment(cfg.experiment, artifact_location=_artifact_location(cfg, uri))
        except MlflowException:  # created by another process meanwhile?
            exp = client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise ValueError(
            f"tracking.experiment: {cfg.experiment!r} is deleted in {uri}; restore it "
            f"(`mlflow experiments restore`) or set tracking.experiment=<another name>"
        )
    return exp.experiment_id


def _artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    """Where a new experiment keeps artifacts: the config's, else beside a sqlite store."""
    if cfg.artifact_location:
        if "://" in cfg.artifact_location or cfg.artifact_location.startswith("file:"):
            return cfg.artifact_location
        return str(Path(cfg.artifact_location).resolve())
    path, _ = _sqlite_path(uri)
    return str(path.parent / ARTIFACT_DIR) if path is not None else None  # None: the server decides


def _get_run(client: MlflowClient, run_id: str, uri: str) -> Run:
    from mlflow.exceptions import MlflowException

    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"tracking: {run_id!r} is not an MLflow run id")
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise LookupError(f"tracking: no run {run_id} in {uri} ({e.message})") from e


def _reopen(client: MlflowClient, run_id: str, uri: str) -> str | None:
    """Set run `run_id` RUNNING again and count the resume; None when the store lacks it."""
    try:
        run = _get_run(client, run_id, uri)
    except (LookupError, ValueError) as e:
        log.warning("tracking: cannot resume run %s (%s); starting a new run", run_id, e)
        return None
    if run.info.lifecycle_stage == "deleted":
        log.warning("tracking: run %s is deleted in %s; starting a new run", run_id, uri)
        return None
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, RESUMES_TAG, str(int(run.data.tags.get(RESUMES_TAG, "0")) + 1))
    return run_id


def _record(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": run.data.tags.get(PARENT_TAG),
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "artifact_uri": run.info.artifact_uri,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def _create_sqlite_db(path: Path) -> None:
    """Create a migrated, empty MLflow sqlite store at `path`, without clobbering one that appeared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        template = _sqlite_template()
        if template is not None:
            shutil.copyfile(template, tmp)
        else:
            _migrate(tmp)
        _link_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sqlite_template() -> Path | None:
    """A migrated empty store for the installed MLflow in the user cache (made once); None if unwritable."""
    import mlflow

    cache = Path(
        os.environ.get("HVDISTILL_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hvdistill"
    )
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.exists():
        return template
    tmp = cache / f".{template.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _migrate(tmp)
        _link_new(tmp, template)
    except OSError as e:
        log.warning("tracking: no store template in %s (%s); migrating each new store", cache, e)
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return template


def _migrate(path: Path) -> None:
    """Run MLflow's migrations on a new sqlite file at `path` (its own engine, closed after)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / ARTIFACT_DIR))
    store.engine.dispose()


def _link_new(src: Path, dst: Path) -> None:
    """Give `src`'s file the name `dst` unless `dst` exists (atomic where hard links work)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        if not dst.exists():
            os.replace(src, dst)
