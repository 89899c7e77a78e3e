"""Rank 0's metrics to the tracker from a background thread: training never waits for the server.

`MetricsSink(tracker, capacity)` wraps any object with `log_metrics(metrics, step)` (the MLflow
tracker of hvdistill/tracking.py, a test double). `log_metrics` only appends to a bounded queue;
one daemon thread hands the entries to the tracker in order. With `capacity` entries waiting (the
tracking server is slow or away) the oldest is dropped, counted and warned about (at the 1st,
2nd, 4th, 8th, ... drop), and the call returns at once: the loop never blocks on the server.
A tracker call that raises is logged and counted, and the thread carries on with the next entry.
`flush(timeout)` waits until everything queued so far has been handed over, at most `timeout`
seconds (the loop flushes at checkpoints and at its end, so the tracking run holds the steps of
the last checkpoint); `close(timeout)` flushes and stops the thread. Every logged step is in the
run's metrics.jsonl as well, whatever the tracker received.

No MLflow import here: hvdistill/tracking.py is the only module importing mlflow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MetricsTracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class MetricsSink:
    """A bounded queue in front of `tracker.log_metrics`, drained by one thread (module docstring)."""

    def __init__(self, tracker: MetricsTracker, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"MetricsSink: capacity {capacity} must be >= 1")
        self.tracker, self.capacity = tracker, capacity
        self.dropped = 0  # entries dropped because the queue was full
        self.failed = 0  # tracker calls that raised
        self._queue: deque[tuple[dict[str, float], int]] = deque()
        self._cond = threading.Condition()
        self._busy = False  # an entry is with the tracker right now
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="metrics-sink", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue `metrics` at `step`; drops the oldest queued entry when `capacity` are waiting."""
        with self._cond:
            if self._closed:
                raise RuntimeError("MetricsSink.log_metrics after close()")
            if len(self._queue) >= self.capacity:
                _, oldest = self._queue.popleft()
                self.dropped += 1
                if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...: counted, not flooding
                    log.warning(
                        "the tracking server is slower than training: metrics of step %d dropped, %d "
                        "dropped so far (tracking.metrics_queue=%d; metrics.jsonl has every step)",
                        oldest,
                        self.dropped,
                        self.capacity,
                    )
            self._queue.append((dict(metrics), step))
            self._cond.notify_all()

    def pending(self) -> int:
        """Entries not yet handed to the tracker (queued or in flight)."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry queued so far reached the tracker; False when `timeout` s ran out."""
        with self._cond:
            done = self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)
        if not done:
            log.warning(
                "metrics sink: %d entries still waiting for the tracking server after %.0f s; "
                "training goes on",
                self.pending(),
                timeout,
            )
        return done

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most `timeout` s) and stop the thread; entries still queued then are dropped."""
        start = time.monotonic()
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        left = None if timeout is None else max(timeout - (time.monotonic() - start), 0.0)
        self._thread.join(left)
        return done

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed
                metrics, step = self._queue.popleft()
                self._busy = True
            try:
                self.tracker.log_metrics(metrics, step=step)
            except Exception as exc:  # a tracking failure must not stop training
                self.failed += 1
                log.warning("metrics of step %d not logged (%d failures so far): %s", step, self.failed, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def open_sink(tracker: Any, capacity: int, main: bool) -> MetricsSink | None:
    """A sink in front of rank 0's tracker; None on other ranks (their null tracker costs nothing)."""
    return MetricsSink(tracker, capacity) if main else None
