"""The one typed configuration of hvdistill: schema, YAML diffs, dotted overrides, validation.

Every tunable number of the system lives here, with the published HVDistill recipe as the
defaults (see docs/method.md). A YAML file in configs/ is a small diff over these defaults;
`key.sub=value` overrides are applied on top. Problems are collected and raised together in
one `ConfigError` that names each key and says how to fix it. `flatten()` gives the flat
`{"a.b": value}` dict used for MLflow params and Ray Tune search spaces.

Each section's dataclasses and checks live in one module beside this one (data, synth,
geometry, model, train, downstream, teacher, study, probe); a check that reads keys of several sections
lives with the section that owns the dependent key. `validate` composes them, for every
section or only the sections a kind of run uses (`RUN_SECTIONS`). The machinery (YAML
reading, overrides, type checks, nearest-name suggestions) lives in hvdistill/config/loader.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hvdistill.config.data import NUSCENES_CAMERAS, DataConfig, SourceConfig, SuperpixelConfig, data_problems
from hvdistill.config.downstream import FinetuneConfig, SweepConfig, finetune_problems, sweep_problems
from hvdistill.config.geometry import AugmentConfig, GeometryConfig, augment_problems, geometry_problems
from hvdistill.config.loader import (
    ConfigError,
    apply_overrides,
    flatten_dataclass,
    load_yaml_diff,
    merge_mapping,
)
from hvdistill.config.model import (
    DepthModelConfig,
    ImageModelConfig,
    LidarModelConfig,
    ModelConfig,
    model_problems,
)
from hvdistill.config.probe import ProbeConfig, probe_problems
from hvdistill.config.study import StudyConfig, study_problems
from hvdistill.config.synth import SynthConfig, synth_problems
from hvdistill.config.teacher import TeacherTrainConfig, teacher_train_problems
from hvdistill.config.train import (
    DistConfig,
    LossConfig,
    OptimConfig,
    PrecisionConfig,
    TrackingConfig,
    TrainConfig,
    dist_problems,
    loss_problems,
    no_problems,
    optim_problems,
    tracking_problems,
    train_problems,
)

__all__ = [
    "NUSCENES_CAMERAS",
    "RUN_SECTIONS",
    "SECTIONS",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DepthModelConfig",
    "DistConfig",
    "FinetuneConfig",
    "GeometryConfig",
    "ImageModelConfig",
    "LidarModelConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PrecisionConfig",
    "ProbeConfig",
    "SourceConfig",
    "StudyConfig",
    "SuperpixelConfig",
    "SweepConfig",
    "SynthConfig",
    "TeacherTrainConfig",
    "TrackingConfig",
    "TrainConfig",
    "flatten",
    "from_dict",
    "load_config",
    "problems",
    "to_dict",
    "validate",
]


@dataclass(slots=True, kw_only=True)
class Config:
    """The whole system. Built by `load_config`, validated once."""

    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    teacher_train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


# section -> its checks (each reads the whole config; cross-section checks sit with the owner)
CHECKS: dict[str, Callable[[Config], list[str]]] = {
    "data": data_problems,
    "synth": synth_problems,
    "geometry": geometry_problems,
    "augment": augment_problems,
    "model": model_problems,
    "loss": loss_problems,
    "optim": optim_problems,
    "precision": no_problems,
    "dist": dist_problems,
    "train": train_problems,
    "tracking": tracking_problems,
    "finetune": finetune_problems,
    "sweep": sweep_problems,
    "teacher_train": teacher_train_problems,
    "study": study_problems,
    "probe": probe_problems,
}
SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))

_PRETRAIN = tuple(
    s for s in SECTIONS if s not in ("synth", "finetune", "sweep", "teacher_train", "study", "probe")
)
# kind of run -> the sections it reads: validated when it loads, and the parameters it records
RUN_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "shard": ("data",),
    "pretrain": _PRETRAIN,
    # fine-tuning reads the data, geometry and tracking sections and `finetune` (plus model.lidar,
    # checked on its own by hvdistill/eval/run.py) and `probe` (the frozen-feature probe's numbers):
    # the teacher's settings do not matter to it
    "finetune": ("data", "geometry", "tracking", "finetune", "probe"),
    "sweep": ("data", "geometry", "tracking", "finetune", "probe", "sweep"),
    "teacher": ("data", "geometry", "augment", "teacher_train"),  # `hvdistill teacher train`
    "study": SECTIONS,  # `hvdistill study`: every stage, world to report
    "all": SECTIONS,
}


def _sections(sections: Iterable[str] | None) -> tuple[str, ...]:
    names = SECTIONS if sections is None else tuple(sections)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; sections are {list(SECTIONS)}")
    return names


def problems(cfg: Config, sections: Iterable[str] | None = None) -> list[str]:
    """Every semantic problem of the given sections (default: all), each with its key and fix."""
    return [p for name in _sections(sections) for p in CHECKS[name](cfg)]


def validate(cfg: Config, sections: Iterable[str] | None = None) -> Config:
    """Raise one ConfigError listing every problem of `sections` (default: all); return cfg when clean."""
    found = problems(cfg, sections)
    if found:
        raise ConfigError(found)
    return cfg


def load_config(
    path: str | None = None, overrides: list[str] | None = None, sections: Iterable[str] | None = None
) -> Config:
    """Defaults <- YAML diff at `path` <- `key.sub=value` overrides, then validate `sections` once.

    `sections` (default: all) are the ones the caller's run uses, e.g. `RUN_SECTIONS["synth"]`;
    type errors and unknown keys are reported in every section regardless.
    """
    cfg = Config()
    found: list[str] = []
    if path:
        found += load_yaml_diff(cfg, path)
    found += apply_overrides(cfg, overrides or [])
    if found:
        raise ConfigError(found)
    return validate(cfg, sections)


def flatten(cfg: Any, sections: Iterable[str] | None = None) -> dict[str, Any]:
    """`{"optim.lr": 0.5, ...}` for MLflow params and Ray Tune spaces.

    `sections` limits a whole `Config` to the sections a run carries, e.g.
    `flatten(cfg, RUN_SECTIONS["pretrain"])` leaves out `synth`, `finetune` and `sweep`.
    """
    if sections is None:
        return flatten_dataclass(cfg)
    return {
        k: v
        for name in _sections(sections)
        for k, v in flatten_dataclass(getattr(cfg, name), f"{name}.").items()
    }


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any], sections: Iterable[str] | None = None) -> Config:
    """The inverse of `to_dict`: a Config from a nested plain dict, checked like a YAML file.

    How a config travels to Ray workers and back from a run directory. Type errors and unknown
    keys are reported for every section, semantic checks for `sections` (default: all), all in
    one ConfigError.
    """
    if not isinstance(d, dict):
        raise ConfigError([f"config: expected a mapping of sections, got {type(d).__name__}"])
    cfg = Config()
    found = merge_mapping(cfg, d)
    if found:
        raise ConfigError(found)
    return validate(cfg, sections)
