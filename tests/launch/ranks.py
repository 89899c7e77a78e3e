"""A run entry for the Ray tests: the real `run`, recording a digest of each rank's final parameters.

`launch.train.train_on_ray(cfg, entry="tests.launch.ranks:run_recording_params")` runs
`hvdistill.train.run.run` unchanged on every Ray Train worker; the only addition is that, when
the loop returns, each rank writes the SHA-256 of its module's parameters (name and bytes, in
name order, gathered first so ZeRO-3 would compare whole tensors too) to
`<run dir>/params-rank-<r>.sha256`, so a test can check that the ranks ended identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def params_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"params-rank-{rank}.sha256"


def run_recording_params(cfg: Any, hooks: Any) -> Any:
    import hvdistill.train.run as run_module

    loop_train = run_module.train

    def train_and_record(job: Any) -> dict[str, float]:
        last = loop_train(job)
        module = job.engine.module
        digest = hashlib.sha256()
        for name, p in sorted(module.named_parameters()):  # ZeRO 0-2: every rank holds them all
            digest.update(name.encode())
            digest.update(p.detach().to("cpu").contiguous().numpy().tobytes())
        params_file(job.run_dir, job.ctx.rank).write_text(digest.hexdigest())
        return last

    run_module.train = train_and_record
    try:
        return run_module.run(cfg, hooks)
    finally:
        run_module.train = loop_train
