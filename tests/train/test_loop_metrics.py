"""The loop's metrics without a run: the Meter (device sums, rank summaries, per-window peak
memory), the metrics sink that keeps a slow tracker off the training path, `publish` through it,
and the DataLoader pinning batches only on CUDA runs."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hvdistill.config import Config
from hvdistill.train import loop
from hvdistill.train.loop import Meter, peak_memory_mb, publish
from hvdistill.train.metrics_sink import MetricsSink

SLOW = 0.2  # seconds a slow tracker takes per call


class Tracker:
    """Records (step, metrics); each call takes `delay` seconds, or waits for `gate` when given."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None, fail_at: int = -1):
        self.delay, self.gate, self.fail_at, self.calls = delay, gate, fail_at, []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        if step == self.fail_at:
            raise ConnectionError("tracking server unreachable")
        self.calls.append((step, metrics))


def test_meter_sums_on_the_device_and_leaves_out_non_finite_micro_batches():
    meter = Meter(samples_per_micro=4)
    values = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([float("nan"), 0, 0, 0]), torch.ones(4)]
    with pytest.MonkeyPatch.context() as patch:  # any read of a tensor's value by the host fails
        for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("a host sync per micro-batch"))
        for v in values:
            meter.micro_batch(v)
    meter.step(lr=0.5, grad_norm=2.0)
    out = meter.flush()
    assert out["loss/total"] == 1.0 and out["loss/bev"] == 2.5  # means over the 2 finite ones
    assert (out["lr"], out["grad_norm"]) == (0.5, 2.0) and out["samples_per_s"] > 0
    assert 0 <= out["data_wait_fraction"] == out["data_wait_fraction/max"] <= 1  # one rank: equal
    assert out["memory/peak_rss_mb"] == out["memory/peak_rss_mb/mean"] > 0
    assert "loss/total" not in meter.flush()  # a new window: nothing finite yet, NaN left out


def test_meter_reports_the_mean_and_max_over_ranks_in_one_collective(monkeypatch):
    calls = []

    def three_ranks(x):  # what dist.all_gather_equal returns on 3 ranks: (W, 2) [wait, peak MiB]
        calls.append(x)
        return torch.tensor([[0.1, 100.0], [0.4, 300.0], [0.1, 200.0]], dtype=torch.float64)

    monkeypatch.setattr(loop.dist, "all_gather_equal", three_ranks)
    meter = Meter(samples_per_micro=2)
    meter.micro_batch(torch.ones(4))
    out = meter.flush()
    assert len(calls) == 1 and calls[0].shape == (2,)
    assert out["data_wait_fraction"] == pytest.approx(0.2) and out["data_wait_fraction/max"] == 0.4
    assert out["memory/peak_rss_mb"] == 300.0 and out["memory/peak_rss_mb/mean"] == pytest.approx(200.0)


def test_cpu_peak_memory_is_read_then_reset_for_the_next_window(tmp_path, monkeypatch):
    """VmHWM is read, then clear_refs gets "5" (VmHWM := current RSS, Linux >= 4.0), so each reading
    covers the window since the previous one. Files stand in for /proc: whether a kernel honours
    the reset (and how soon its RSS counters catch up) is the kernel's, and varied between runs."""
    status, clear_refs = tmp_path / "status", tmp_path / "clear_refs"
    status.write_text("Name:\tpython\nVmRSS:\t  512000 kB\nVmHWM:\t  1048576 kB\n")
    clear_refs.write_text("")
    monkeypatch.setattr(loop, "PROC_STATUS", status)
    monkeypatch.setattr(loop, "CLEAR_REFS", clear_refs)
    assert peak_memory_mb(torch.device("cpu")) == ("memory/peak_rss_mb", 1024.0)
    assert clear_refs.read_text() == loop.RESET_PEAK_RSS == "5"
    status.unlink()  # no /proc status (not Linux): the process's peak since it started instead
    name, peak = peak_memory_mb(torch.device("cpu"))
    assert name == "memory/peak_rss_mb" and peak > 10  # getrusage's ru_maxrss of this test process


def test_a_slow_tracker_never_blocks_and_a_flush_delivers_everything_in_order():
    tracker = Tracker(delay=SLOW)
    sink = MetricsSink(tracker, capacity=10)
    tic = time.perf_counter()
    for step in range(4):
        sink.log_metrics({"loss": float(step)}, step)
    assert time.perf_counter() - tic < SLOW  # four calls would take 4 x SLOW
    assert sink.flush(timeout=10)
    assert [s for s, _ in tracker.calls] == [0, 1, 2, 3] and sink.pending() == 0
    assert sink.close(timeout=10)
    with pytest.raises(RuntimeError, match="after close"):
        sink.log_metrics({}, 4)


def test_a_full_queue_drops_the_oldest_with_a_counted_warning(caplog):
    gate = threading.Event()
    tracker = Tracker(gate=gate)
    sink = MetricsSink(tracker, capacity=2)
    with caplog.at_level(logging.WARNING, logger="hvdistill.train.metrics_sink"):
        sink.log_metrics({"loss": 0.0}, 0)
        while sink.pending() and not sink._busy:  # step 0 reaches the (stuck) tracker
            time.sleep(0.01)
        for step in range(1, 6):
            sink.log_metrics({"loss": float(step)}, step)
    assert not sink.flush(timeout=0.05)  # the stuck server: a flush gives up, training goes on
    gate.set()
    assert sink.close(timeout=10)
    assert [s for s, _ in tracker.calls] == [0, 4, 5] and sink.dropped == 3
    drops = [r.getMessage() for r in caplog.records if "dropped so far" in r.getMessage()]
    assert len(drops) == 2 and "1 dropped so far" in drops[0] and "2 dropped so far" in drops[1]  # 1st, 2nd


def test_a_failing_tracker_is_counted_and_the_sink_goes_on(caplog):
    tracker = Tracker(fail_at=1)
    sink = MetricsSink(tracker, capacity=5)
    for step in range(3):
        sink.log_metrics({"loss": 1.0}, step)
    assert sink.close(timeout=10)
    assert [s for s, _ in tracker.calls] == [0, 2] and sink.failed == 1


def test_publish_goes_through_the_sink_and_writes_every_step(tmp_path: Path):
    tracker = Tracker(delay=SLOW)
    job = SimpleNamespace(
        state=SimpleNamespace(step=7),
        tracker=tracker,
        sink=MetricsSink(tracker, capacity=4),
        ctx=SimpleNamespace(is_main=True),
        run_dir=tmp_path,
        on_log=None,
    )
    tic = time.perf_counter()
    publish(job, {"loss/total": 1.5, "lr": 0.1})
    assert time.perf_counter() - tic < SLOW
    assert (tmp_path / loop.METRICS_FILE).read_text().startswith('{"step": 7, "loss/total": 1.5')
    assert job.sink.close(timeout=10) and tracker.calls == [(7, {"loss/total": 1.5, "lr": 0.1})]


def test_batches_are_pinned_only_for_cuda_runs():
    from hvdistill.train.data import build_loader

    cfg = Config()
    cfg.data.loader_workers = 0
    stream = [torch.zeros(1)]  # any dataset: only the loader options are looked at
    assert not build_loader(stream, cfg).pin_memory
    cfg.dist.use_gpu = True
    assert build_loader(stream, cfg).pin_memory


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_pin_and_copy_to_cuda_without_blocking():
    from tests.models.test_distiller import tiny_batch, tiny_config

    batch = tiny_batch(tiny_config())
    pinned = batch.pin_memory()
    assert pinned.points.is_pinned() and pinned.intrinsics.is_pinned()
    moved = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert moved.points.is_cuda and torch.equal(moved.points.cpu(), batch.points)
    assert moved.intrinsics.dtype == torch.float64 and moved.spatial_shape == batch.spatial_shape
