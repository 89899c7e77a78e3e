"""hvdistill/train/outputs.py: the start-up probe of the run's storage, and the mirrored run files.

The probe runs on 2 real gloo ranks: once with both ranks on the same S3 endpoint (passes, leaves
nothing behind), once with rank 1 pointed at a second S3 server that has a bucket of the same name
(a node configured for another store): rank 1 writes its probe there but cannot read rank 0's, and
both ranks stop at once with one line naming the location, the rank, its node and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch.distributed as tdist

from hvdistill.storage import Location
from hvdistill.train.outputs import StorageProbeError, fetch_missing, mirror_files, probe_storage
from tests.helpers.gloo import free_port, init_gloo
from tests.helpers.s3 import S3ServerProcess


def _spawn(world: int, args: tuple, timeout: float = 120.0) -> None:
    """Ranks in fresh interpreters (spawn): the S3 client reads its endpoint once per process, and a
    forked child would keep the parent's."""
    import torch.multiprocessing as mp

    mp.start_processes(_probe_rank, args=(world, free_port(), *args), nprocs=world, start_method="spawn")


def _probe_rank(rank: int, world: int, port: int, location: str, endpoints: list[str], out: str) -> None:
    os.environ["AWS_ENDPOINT_URL"] = endpoints[rank]  # this rank's node and its view of "s3://"
    init_gloo(rank, world, port)
    try:
        probe_storage(Location(location), "the run's storage")
        verdict = "ok"
    except StorageProbeError as e:
        verdict = str(e)
    Path(out, f"rank{rank}.txt").write_text(verdict)
    tdist.destroy_process_group()


@pytest.mark.slow  # every storage-mode run passes it too (the demo test in `make test`)
def test_ranks_that_share_the_store_pass_the_probe_and_leave_nothing(s3_server, s3_bucket, tmp_path):
    location = f"{s3_bucket}/runs/a"
    _spawn(2, (location, [s3_server.endpoint] * 2, str(tmp_path)))
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["ok", "ok"]
    objects = [k for k in s3_server.keys(s3_bucket.removeprefix("s3://")) if not k.endswith("/")]
    assert objects == []  # the probe cleaned up after itself (pyarrow may leave a prefix marker)


@pytest.mark.slow  # several processes or a Ray job: seconds each; `make test-all` runs it
def test_a_rank_seeing_another_store_stops_every_rank_with_one_line(s3_server, s3_bucket, tmp_path):
    other = S3ServerProcess()  # another node's idea of the endpoint: the same bucket name, another store
    try:
        other.client().create_bucket(Bucket=s3_bucket.removeprefix("s3://"))
        location = f"{s3_bucket}/runs/b"
        _spawn(2, (location, [s3_server.endpoint, other.endpoint], str(tmp_path)))
    finally:
        other.stop()
    verdicts = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert verdicts[0] == verdicts[1], verdicts  # both ranks stop, with the same line
    line = verdicts[0]
    print(line)
    assert "\n" not in line and line.startswith("rank ") and f"{location}" in line
    assert "cannot use the run's storage" in line and "AWS_ENDPOINT_URL" in line and "on node " in line


def test_a_local_run_directory_is_probed_in_place(tmp_path):
    probe_storage(Location(tmp_path), "the run directory")  # one process: writes, reads, cleans up
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "readonly").mkdir()
    blocker = tmp_path / "readonly" / "file"
    blocker.write_text("x")
    with pytest.raises(StorageProbeError, match="cannot write .*file/.probe-"):
        probe_storage(Location(blocker), "the run directory")  # a file where a directory must be


def test_run_files_are_mirrored_and_fetched_back_when_missing(s3_bucket, tmp_path):
    run_dir, storage = tmp_path / "run", Location(f"{s3_bucket}/runs/c")
    run_dir.mkdir()
    (run_dir / "tracking.json").write_text(json.dumps({"run_id": "abc"}))
    mirror_files(run_dir, storage, ("tracking.json", "metrics.jsonl"))  # one of them exists
    assert [c.name for c in storage.iterdir()] == ["tracking.json"]
    fresh = tmp_path / "other-node"
    fresh.mkdir()
    assert fetch_missing(fresh, storage, ("tracking.json", "metrics.jsonl")) == ["tracking.json"]
    assert json.loads((fresh / "tracking.json").read_text()) == {"run_id": "abc"}
    assert fetch_missing(fresh, storage, ("tracking.json",)) == []  # present locally: kept
    assert fetch_missing(fresh, None, ("tracking.json",)) == [] and mirror_files(fresh, None, ()) is None
