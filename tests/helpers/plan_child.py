"""A spawned process that reads a read plan where nuscenes-devkit cannot be imported.

The child blocks the devkit before reading, and reports any `nuscenes.*` module that got imported
at all (unpickling the plan included): the plan must carry everything reading needs. The plan and
the sample travel by multiprocessing, as they travel by Ray between the driver and a sharding
worker.
"""

from __future__ import annotations

import sys


def read_without_devkit(plan, results) -> None:
    """Read `plan` here; put (sample, devkit modules that got imported anyway) on `results`."""
    sys.modules.setdefault("nuscenes", None)  # unless already imported: any import of the devkit now fails
    from hvdistill.data.sources.plan import read_plan

    sample = read_plan(plan)
    results.put((sample, [m for m in sys.modules if m.startswith("nuscenes.")]))
