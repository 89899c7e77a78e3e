"""Pretrained backbones for fine-tuning: where `finetune.backbone` points, and loading it safely.

`finetune.backbone` names one of:
- "" : random initialisation (the baseline);
- a pretraining run directory holding `backbone.pt` (and `backbone.json`);
- a `backbone.pt` file (its `backbone.json` is read from beside it when present);
- an object-store location (`s3://bucket/prefix/<run name>`, a pretraining run's storage under
  Ray Train, or the `backbone.pt` in it): copied with its `backbone.json` through
  hvdistill/storage.py into the fine-tuning run directory;
- `runs:/<run id>` (or a bare 32-hex MLflow run id that is not a path): the run's `backbone.pt`
  artifact (and its `backbone.json`) is downloaded from the store at `tracking.uri`
  through hvdistill/tracking.py into the fine-tuning run directory.

`backbone.pt` is a plain `{name: tensor}` state dict of the student's `SparseUNet`, read with
`torch.load(weights_only=True)` (never unpickled). `backbone.json` records the pretraining's
`model.lidar` config and voxel size; a backbone whose layout differs from the configured one is
refused before any weight is read, with the overrides that would match it. The tensors are then
compared key by key (hvdistill/models/state.py): a shape mismatch is always refused; missing or
unexpected keys are refused under `finetune.strict_backbone` and otherwise loaded around and
reported. What was loaded, from where (with the file's sha256), is a `LoadReport` the run saves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hvdistill.config import LidarModelConfig
from hvdistill.eval.segmentation import SegmentationModel
from hvdistill.models.state import describe, key_problems
from hvdistill.storage import Location, is_uri

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pt"
BACKBONE_META = "backbone.json"
RUN_PREFIX = "runs:/"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# the model.lidar fields that decide the backbone's weights (heads and dtypes do not)
LAYOUT_FIELDS = ("in_channels", "stem_channels", "stem_convs", "planes", "encoder_blocks", "decoder_blocks")
# backbone.json files written before a layout key existed hold the layout of that time
LAYOUT_BEFORE_KEY = {"stem_convs": 2}
TOLERATED = ("num_batches_tracked",)  # BN counters: absent from some exports, unused in training
VOXEL_TOLERANCE = 1e-9


@dataclass
class BackboneFiles:
    """Where a backbone was found: its state dict, its metadata (or None) and how it was named."""

    weights: Path
    meta: Path | None
    source: str  # "run_dir" | "file" | "mlflow" | "storage"
    spec: str  # finetune.backbone as given


@dataclass
class LoadReport:
    """What `load_backbone` did, saved into the fine-tuning run directory."""

    spec: str
    source: str  # "random" | "run_dir" | "file" | "mlflow" | "storage"
    weights: str = ""
    sha256: str = ""
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_backbone(spec: str, tracking_uri: str = "", download_dir: Path | None = None) -> BackboneFiles:
    """Resolve `finetune.backbone` (not empty) to local files; a clear error when nothing is there."""
    if is_uri(spec):
        return _download_from_store(spec, download_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        weights = path / BACKBONE_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"finetune.backbone: {path} has no {BACKBONE_FILE}; is it a finished pretraining run "
                f"directory?"
            )
        return BackboneFiles(weights, _sibling_meta(weights), "run_dir", spec)
    if path.is_file():
        return BackboneFiles(path, _sibling_meta(path), "file", spec)
    run_id = spec[len(RUN_PREFIX) :] if spec.startswith(RUN_PREFIX) else spec
    if spec.startswith(RUN_PREFIX) or _RUN_ID.match(spec):
        return _download_from_run(spec, run_id.strip("/"), tracking_uri, download_dir)
    raise FileNotFoundError(
        f"finetune.backbone: {spec!r} is neither a run directory, a {BACKBONE_FILE} file nor an MLflow "
        f"run (runs:/<run id>)"
    )


def _download_from_store(spec: str, download_dir: Path | None) -> BackboneFiles:
    """A backbone in an object store (a run's storage holding backbone.pt, or the file itself)
    copied, with the backbone.json beside it, to `download_dir`."""
    if download_dir is None:
        raise ValueError("a backbone in an object store needs a directory to download it into")
    location = Location(spec)
    weights = location / BACKBONE_FILE
    if not weights.is_file():
        if not location.is_file():
            raise FileNotFoundError(
                f"finetune.backbone: {spec} holds no {BACKBONE_FILE} and is not a file; give a finished "
                f"run's storage (<dist.storage_path>/<run name>) or its {BACKBONE_FILE}"
            )
        weights = location
    local = weights.download(Path(download_dir) / BACKBONE_FILE)
    meta = weights.parent / BACKBONE_META
    local_meta = meta.download(Path(download_dir) / BACKBONE_META) if meta.is_file() else None
    return BackboneFiles(local, local_meta, "storage", spec)


def _sibling_meta(weights: Path) -> Path | None:
    meta = weights.with_name(BACKBONE_META)
    return meta if meta.is_file() else None


def _download_from_run(spec: str, run_id: str, uri: str, download_dir: Path | None) -> BackboneFiles:
    """The run's backbone.pt artifact (and the backbone.json beside it) copied to `download_dir`."""
    if not uri:
        raise ValueError(
            f"finetune.backbone: {spec!r} names an MLflow run; set tracking.uri to the store that holds "
            f"it (e.g. sqlite:///runs/pretrain/<run>/mlruns.db or http://host:5000)"
        )
    if download_dir is None:
        raise ValueError("an MLflow backbone needs a directory to download it into")
    from hvdistill import tracking

    paths = tracking.artifact_paths(uri, run_id)
    found = sorted((p for p in paths if p.rsplit("/", 1)[-1] == BACKBONE_FILE), key=len)
    if not found:
        raise FileNotFoundError(
            f"finetune.backbone: MLflow run {run_id} at {uri} has no {BACKBONE_FILE} artifact "
            f"(it has {len(paths)} artifacts); did the pretraining finish?"
        )
    weights = tracking.download_artifact(uri, run_id, found[0], download_dir)
    meta_path = found[0][: -len(BACKBONE_FILE)] + BACKBONE_META
    meta = tracking.download_artifact(uri, run_id, meta_path, download_dir) if meta_path in paths else None
    return BackboneFiles(Path(weights), None if meta is None else Path(meta), "mlflow", spec)


def read_meta(path: Path | None) -> dict[str, Any]:
    """backbone.json as a dict ({} without one)."""
    if path is None:
        return {}
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable backbone metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: backbone metadata must be a JSON object")
    return meta


def _meta_lidar(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pretraining's model.lidar config in backbone.json: {"model": {"lidar": ...}} or {"lidar": ...}."""
    model = meta.get("model")
    lidar = model.get("lidar") if isinstance(model, Mapping) else meta.get("lidar")
    return lidar if isinstance(lidar, Mapping) else None


def _meta_voxel_size(meta: Mapping[str, Any]) -> float | None:
    geometry = meta.get("geometry")
    value = geometry.get("voxel_size") if isinstance(geometry, Mapping) else meta.get("voxel_size")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def layout_problems(meta: Mapping[str, Any], cfg: LidarModelConfig, voxel_size: float) -> list[str]:
    """How backbone.json's model config differs from the configured one, each with its matching override."""
    p: list[str] = []
    lidar = _meta_lidar(meta)
    if meta and lidar is None:
        p.append(f"{BACKBONE_META} holds no model.lidar config; the layout cannot be checked")
    for name in LAYOUT_FIELDS if lidar is not None else ():
        theirs, ours = lidar.get(name, LAYOUT_BEFORE_KEY.get(name)), getattr(cfg, name)
        if isinstance(ours, list):
            theirs = list(theirs) if isinstance(theirs, list | tuple) else theirs
        if theirs != ours:
            value = json.dumps(theirs).replace(" ", "")
            p.append(
                f"model.lidar.{name}: the backbone has {theirs}, the config {ours}; "
                f"set model.lidar.{name}={value}"
            )
    theirs_voxel = _meta_voxel_size(meta)
    if theirs_voxel is not None and abs(theirs_voxel - voxel_size) > VOXEL_TOLERANCE:
        p.append(
            f"geometry.voxel_size: the backbone was pretrained on {theirs_voxel:g} m voxels, the config has "
            f"{voxel_size:g}; set geometry.voxel_size={theirs_voxel:g} (weights do not transfer across "
            f"voxel sizes)"
        )
    return p


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} state dict, loaded weights-only onto the CPU (nothing unpickled)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load on an outside file: any failure = unusable file
        raise ValueError(
            f"{path}: not a weights-only tensor state dict ({type(e).__name__}: {str(e)[:300]}); give the "
            f"backbone.pt a pretraining exported (finetune.backbone), or finetune.backbone= for random init"
        ) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: expected a {{name: tensor}} state dict of the LiDAR backbone")
    return dict(state)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_backbone(
    model: SegmentationModel,
    spec: str,
    voxel_size: float,
    lidar_cfg: LidarModelConfig,
    *,
    strict: bool = True,
    tracking_uri: str = "",
    download_dir: Path | None = None,
) -> LoadReport:
    """Load `finetune.backbone` into `model.backbone` (random init for ""); refuse a different layout."""
    if not spec:
        return LoadReport(spec="", source="random")
    files = find_backbone(spec, tracking_uri, download_dir)
    meta = read_meta(files.meta)
    if files.meta is None:
        log.warning(
            "%s has no %s beside it: its layout is checked by key and shape only",
            files.weights,
            BACKBONE_META,
        )
    problems = layout_problems(meta, lidar_cfg, voxel_size)
    if problems:
        raise ValueError(
            f"backbone {files.weights} does not fit the configured model:\n  " + "\n  ".join(problems)
        )
    state = read_state_dict(files.weights)
    own = model.backbone.state_dict()
    found = key_problems(own, state, tolerated=TOLERATED)
    if found["mismatched"] or (strict and (found["missing"] or found["unexpected"])):
        raise ValueError(
            f"backbone {files.weights} does not match the LiDAR backbone: {describe(found)}"
            + ("" if found["mismatched"] else "; finetune.strict_backbone=false loads the matching keys")
        )
    usable = {k: v for k, v in state.items() if k in own}
    model.backbone.load_state_dict(usable, strict=False)
    if found["missing"] or found["unexpected"]:
        log.warning("backbone %s loaded non-strictly: %s", files.weights, describe(found))
    report = LoadReport(
        spec=spec,
        source=files.source,
        weights=str(files.weights),
        sha256=sha256(files.weights),
        loaded=len(usable),
        missing=found["missing"],
        unexpected=found["unexpected"],
        meta=meta,
    )
    log.info("loaded %d backbone tensors from %s (%s)", report.loaded, files.weights, files.source)
    return report
