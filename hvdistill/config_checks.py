"""Cross-field checks of a type-correct config: every problem, each with its key and its fix.

Type errors are caught while loading (hvdistill/config_loader.py); these checks see values
that are individually well-typed but inconsistent (a crop not divisible by the feature
stride, a probability above 1, a teacher with neither weights nor an explicit random init).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hvdistill.config import Config


def _check_range(problems: list[str], key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        problems.append(f"{key}: {value} is outside [{lo}, {hi}]; set {key}=<value in range>")


def _check_pair(problems: list[str], key: str, pair: list[float]) -> None:
    if len(pair) != 2 or pair[0] > pair[1]:
        problems.append(f"{key}: expected [low, high] with low <= high, got {pair}")


def geometry_problems(cfg: Config) -> list[str]:
    p: list[str] = []
    g = cfg.geometry
    if len(g.point_range) != 6 or any(g.point_range[i] >= g.point_range[i + 3] for i in range(3)):
        p.append(
            f"geometry.point_range: expected [xmin, ymin, zmin, xmax, ymax, zmax] with "
            f"min < max, got {g.point_range}"
        )
    for key in ("voxel_size", "bev_resolution", "depth_step"):
        if getattr(g, key) <= 0:
            p.append(f"geometry.{key}: must be > 0; set geometry.{key}=<positive float>")
    if g.depth_max <= g.depth_min:
        p.append("geometry.depth_max: must exceed geometry.depth_min")
    for key in ("crop_height", "crop_width"):
        if getattr(g, key) % g.feature_stride:
            p.append(
                f"geometry.{key}: {getattr(g, key)} is not a multiple of "
                f"geometry.feature_stride={g.feature_stride}"
            )
    bins = (g.depth_max - g.depth_min) / g.depth_step if g.depth_step > 0 else 0
    if g.depth_step > 0 and abs(bins - round(bins)) > 1e-6:
        p.append(
            f"geometry.depth_step: {g.depth_step} does not divide depth_max - depth_min = "
            f"{g.depth_max - g.depth_min}; choose a step that gives a whole number of bins"
        )
    if cfg.model.image.output_stride != g.feature_stride:
        p.append(
            f"model.image.output_stride: {cfg.model.image.output_stride} must equal "
            f"geometry.feature_stride={g.feature_stride} (the depth lift works on that grid)"
        )
    return p


def augment_problems(cfg: Config) -> list[str]:
    p: list[str] = []
    a = cfg.augment
    if a.crop_max_tries < 1:
        p.append(f"augment.crop_max_tries: {a.crop_max_tries} must be >= 1")
    if not 0 < a.crop_area[0] <= a.crop_area[-1] <= 1:
        p.append(f"augment.crop_area: {a.crop_area} must lie in (0, 1]")
    if a.crop_aspect[0] <= 0:
        p.append(f"augment.crop_aspect: {a.crop_aspect} must be positive")
    for key in ("flip_x_p", "flip_y_p", "hflip_p", "crop_min_kept_fraction"):
        _check_range(p, f"augment.{key}", getattr(a, key), 0.0, 1.0)
    for key in ("scale_range", "crop_area", "crop_aspect"):
        _check_pair(p, f"augment.{key}", getattr(a, key))
    return p


def data_problems(cfg: Config) -> list[str]:
    p: list[str] = []
    d = cfg.data
    if not 1 <= d.superpixels.n_segments <= 30000:
        p.append(
            f"data.superpixels.n_segments: {d.superpixels.n_segments} must be in 1..30000 "
            f"(ids are stored as int16)"
        )
    if d.stored_image_width <= 0 or d.stored_image_height <= 0:
        p.append("data.stored_image_width / data.stored_image_height: must be > 0")
    if not 1 <= d.jpeg_quality <= 100:
        p.append(f"data.jpeg_quality: {d.jpeg_quality} must be in 1..100")
    _check_range(p, "data.max_bad_fraction", d.max_bad_fraction, 0.0, 1.0)
    if not d.sources and not d.shards:
        p.append("data: neither data.sources nor data.shards is set; give at least one")
    if any(s.weight <= 0 for s in d.sources):
        p.append("data.sources[*].weight: weights must be > 0")
    if not d.shard_splits or any(s not in ("train", "val") for s in d.shard_splits):
        p.append(f"data.shard_splits: {d.shard_splits} must list 'train' and/or 'val'")
    if d.max_consecutive_bad < 1:
        p.append(f"data.max_consecutive_bad: {d.max_consecutive_bad} must be >= 1")
    return p


def model_and_training_problems(cfg: Config) -> list[str]:
    p: list[str] = []
    lm, im = cfg.model.lidar, cfg.model.image
    if len(lm.planes) != 8 or len(lm.encoder_blocks) != 4 or len(lm.decoder_blocks) != 4:
        p.append("model.lidar: planes needs 8 entries, encoder_blocks and decoder_blocks 4 each")
    if not im.weights and not im.random_init:
        p.append(
            "model.image.weights: no teacher checkpoint given; set model.image.weights="
            "/path/to/moco_v2.pth, or model.image.random_init=true for synthetic runs"
        )
    if im.weights and im.random_init:
        p.append("model.image: both weights and random_init are set; choose one")
    if cfg.loss.temperature <= 0:
        p.append("loss.temperature: must be > 0")
    if cfg.loss.tile_size < 0 or cfg.loss.queue_size < 0:
        p.append("loss.tile_size / loss.queue_size: must be >= 0 (0 turns them off)")
    if cfg.loss.depth_target_pool != cfg.geometry.feature_stride:
        p.append(
            f"loss.depth_target_pool: {cfg.loss.depth_target_pool} must equal "
            f"geometry.feature_stride={cfg.geometry.feature_stride} (targets live on the depth grid)"
        )
    t = cfg.train
    if t.micro_batch <= 0 or t.global_batch <= 0 or t.global_batch % t.micro_batch:
        p.append(
            f"train.global_batch: {t.global_batch} must be a positive multiple of "
            f"train.micro_batch={t.micro_batch}"
        )
    if cfg.dist.zero_stage not in (0, 1, 2, 3):
        p.append(f"dist.zero_stage: {cfg.dist.zero_stage} is not one of 0, 1, 2, 3")
    if lm.sparse_dtype == "float16" and not cfg.dist.use_gpu:
        p.append("model.lidar.sparse_dtype: float16 needs a GPU; set it to float32 on CPU")
    for f in cfg.sweep.label_fractions:
        _check_range(p, "sweep.label_fractions[*]", f, 0.0, 1.0)
    _check_range(p, "finetune.label_fraction", cfg.finetune.label_fraction, 0.0, 1.0)
    return p


def semantic_problems(cfg: Config) -> list[str]:
    """Every cross-field problem of a type-correct config, each with its fix."""
    return (
        geometry_problems(cfg) + augment_problems(cfg) + data_problems(cfg) + model_and_training_problems(cfg)
    )
