"""The dataset-source tests read the session's synthetic world (tests/conftest.py).

`nuscenes_root`, `kitti_root` and their `*_copy` fixtures come from tests/conftest.py; the
world's facts live in tests/helpers/world.py and are re-exported here for tests that import
them from this file.
"""

from __future__ import annotations

from tests.helpers.world import NUSCENES_VERSION, tiny_synth_config

__all__ = ["NUSCENES_VERSION", "tiny_synth_config"]
