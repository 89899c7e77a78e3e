"""A tiny nuScenes world with side outputs for the teacher tests, and the config that reads it.

The session world of tests/conftest.py has no nuScenes side outputs, so this module writes its
own: 2 scenes (one train, one val) x 2 keyframes x 6 cameras of 96x54 pixels, about a second.
Tests that damage it take `teacher_world_copy`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvdistill.config import Config, load_config
from tests.helpers.world import NUSCENES_VERSION, tiny_synth_config

TINY = [
    "model.image.arch=resnet18",
    "model.image.random_init=true",
    "data.stored_image_width=96",
    "data.stored_image_height=54",
    "geometry.crop_height=32",
    "geometry.crop_width=56",
    "teacher_train.steps=3",
    "teacher_train.batch_size=2",
    "teacher_train.output_stride=16",
    "teacher_train.eval_images=4",
    "teacher_train.log_every=1",
    "teacher_train.device=cpu",
]


@pytest.fixture(scope="session")
def teacher_world(tmp_path_factory) -> Path:
    """A nuScenes root with class maps under side_outputs/: read only."""
    from hvdistill.synthetic import write_nuscenes

    cfg = tiny_synth_config(scenes=2, frames=2, image_width=96, image_height=54)
    out = tmp_path_factory.mktemp("teacher-world")
    return Path(write_nuscenes(out, cfg, version=NUSCENES_VERSION, side_outputs=True, progress=False))


@pytest.fixture
def teacher_world_copy(teacher_world, tmp_path) -> Path:
    """A private copy of the teacher world that a test may damage."""
    return Path(shutil.copytree(teacher_world, tmp_path / "world"))


def teacher_config(root: Path, out: Path, *overrides: str, dataset: str = "nuscenes") -> Config:
    """The tiny teacher config over `root`, writing to `out`/teacher.pt."""
    sources = [f"data.sources=[{{name: {dataset}, root: {root}, version: {NUSCENES_VERSION}}}]"]
    return load_config(
        None,
        [*sources, *TINY, f"teacher_train.output={out / 'teacher.pt'}", *overrides],
        sections=["teacher_train"],
    )


def assert_loads_strictly(weights, arch: str = "resnet18", fmt: str = "torchvision") -> dict:
    """The saved teacher is a backbone-only tensor state dict that pretraining's image teacher of
    `arch` loads in format `fmt` with nothing missing, unexpected or mismatched, tensor for tensor;
    its <output>.json."""
    import json

    import torch

    from hvdistill.config import ModelConfig, PrecisionConfig
    from hvdistill.config.model import ImageModelConfig
    from hvdistill.models.image import build_image_teacher

    saved = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    assert not any(k.startswith(("fc.", "classifier.")) for k in saved)
    image = ImageModelConfig(arch=arch, weights=str(weights), weights_format=fmt, random_init=False)
    teacher = build_image_teacher(ModelConfig(image=image), PrecisionConfig())
    report = teacher.load_report
    assert not (report.missing or report.unexpected or report.mismatched)
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key
    return json.loads(weights.with_suffix(".json").read_text())
