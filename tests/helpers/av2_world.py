"""The session's small synthetic Argoverse 2 world (tests/conftest.py `av2_root`) and its facts.

One log in each of train and val, three sweeps each (six samples), ring images at 0.04 of the
real size (82 x 62, the front centre 62 x 82) and two 16-beam units with 360 azimuth steps: about
a second to write. Shared read only; a test that damages it takes `av2_copy`.
"""

from __future__ import annotations

from pathlib import Path

from hvdistill.config import SourceConfig, SynthConfig
from hvdistill.config.synth import Argoverse2SynthConfig
from hvdistill.data.sources import build_source

AV2_SWEEPS = 3  # per log
AV2_SPLITS = ("train", "val")  # one log each


def av2_synth_config(**changes) -> SynthConfig:
    """The world's SynthConfig (`changes`: other `synth` values, e.g. for a second world)."""
    layout = Argoverse2SynthConfig(logs=1, splits=list(AV2_SPLITS), image_scale=0.04, lidar_beams=16)
    return SynthConfig(**{"frames_per_scene": AV2_SWEEPS, "seed": 5, "lidar_points_per_beam": 360,
                          "argoverse2": layout, **changes})  # fmt: skip


def write_av2_world(out: Path) -> Path:
    from hvdistill.synthetic import write_argoverse2

    return Path(write_argoverse2(out, av2_synth_config(), progress=False))


def av2_source(root: Path, split: str = "train", **changes):
    """The `argoverse2` source of `root` at `split` (all seven ring cameras unless changed)."""
    return build_source(SourceConfig(name="argoverse2", root=str(root), split=split, **changes))


def av2_keys(source) -> list[str]:
    return [k for chunk in source.chunks() for k in source.keys(chunk)]
