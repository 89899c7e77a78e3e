"""Peak resident memory a block of code adds, the way every benchmark here measures it.

`run_module` runs a benchmark module in a fresh process (`python -m benchmarks.bench_x ...`
from the repository root), which is where each measured variant runs.

Linux only: the resident-set high-water mark (VmHWM of /proc/self/status) is reset to the
current resident size through /proc/self/clear_refs on entry; on exit `added_mb` is the new
high-water mark minus the resident size at entry. Unlike tracemalloc or the torch profiler it
sees every allocator (torch's, spconv's, numpy's). Run each measured variant in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root: where `-m benchmarks.*` resolves


def status_kib(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """`with PeakRSS() as m: ...` then `m.added_mb`."""

    added_mb: float = 0.0

    def __enter__(self) -> PeakRSS:
        self.before = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        self.added_mb = (status_kib("VmHWM") - self.before) / 1024


def run_module(module: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """`python -m module args` in a fresh process from the repository root, output captured."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, check=check, capture_output=True, text=True)
