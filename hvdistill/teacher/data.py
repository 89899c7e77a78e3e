"""Image / side-output pairs of a synthetic world, read for teacher training (docs/teacher.md).

Listing: each distinct root of `data.sources` is opened through its dataset source
(hvdistill/data/sources/) at the requested split, so split membership, the image files and the
label lookup are exactly the ones sharding and pretraining use. For every camera image at
`<root>/<relpath>` the renderer's maps are `<root>/side_outputs/<relpath without suffix>` +
`_class.png`, `_depth.png`, `_normal.png` (written by `hvdistill synth --side-outputs`; the rule
and encodings of hvdistill/synthetic/side_outputs.py, restated here because nothing on the
training path imports the synthetic package). `teacher_train.target` says which maps a pair
needs: the class map (classes) or the depth and normal maps (geometry). A needed path that
resolves outside its root (`..`, a symlink out of it) is counted as bad and never opened.

Reading: the image is decoded and resized to the stored resolution (`data.stored_image_*`,
bilinear), the class map taken at the same size (nearest) and mapped through the dataset's
official lookup to the downstream classes (0 = ignore); or the depth (16-bit millimetres) and
normal (8-bit RGB, n = v / 127.5 - 1, (0, 0, 0) = none) maps are decoded and taken at the same
size (nearest). A file that is missing, cannot be decoded, has the wrong size or mode, declares
more pixels than `data.max_image_pixels` allows (checked from its header, before decoding:
hvdistill/data/sources/files.py) or holds ids the lookup lacks yields a `PairError` instead of
a sample; the caller counts, logs and skips it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hvdistill.config import Config, DataConfig, SourceConfig
from hvdistill.config.data import image_pixel_limit
from hvdistill.config.teacher import teacher_dataset
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.prepare import resize_image, stored_size, upsample_nearest
from hvdistill.data.sources import build_source
from hvdistill.data.sources.files import open_image, read_image
from hvdistill.data.sources.labels import UNMAPPED, semantickitti_lookup

SIDE_DIR = "side_outputs"  # hvdistill/synthetic/side_outputs.py: SIDE_DIR
CLASS_SUFFIX = "_class.png"
DEPTH_SUFFIX = "_depth.png"  # 16-bit, millimetres, 0 = none
NORMAL_SUFFIX = "_normal.png"  # 8-bit RGB, n = v / NORMAL_SCALE - 1, (0, 0, 0) = none
DEPTH_SCALE = 1000.0  # depth map value per metre
NORMAL_SCALE = 127.5
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")
CLASS_MAP_VALUES = 256  # class maps are 8-bit
UNKNOWN_SHOWN = 5  # unknown ids a PairError names


@dataclass(frozen=True)
class ImagePair:
    """One camera image and the renderer's maps of it (those of the target are checked to exist)."""

    image: Path
    class_map: Path
    chunk: str  # scene / sequence
    depth_map: Path
    normal_map: Path

    def needed(self, target: str) -> tuple[Path, ...]:
        """The side outputs a `teacher_train.target` trains on."""
        return (self.class_map,) if target == "classes" else (self.depth_map, self.normal_map)


@dataclass(frozen=True)
class PairError:
    """Why one pair could not be used: the file at fault and the reason."""

    path: str
    reason: str


@dataclass
class Listing:
    """The pairs of one split, the raw-id -> class lookup, and the pairs refused while listing."""

    dataset: str
    roots: list[str]
    pairs: list[ImagePair]
    lookup: np.ndarray | None  # (256,) uint8 class-map id -> downstream class; None for geometry
    bad: list[PairError]
    target: str = "classes"  # teacher_train.target


def class_map_path(root: Path, image: Path, suffix: str = CLASS_SUFFIX) -> Path:
    """`<root>/side_outputs/<image relpath without suffix><suffix>` (the class map by default)."""
    base = root / SIDE_DIR / image.relative_to(root).with_suffix("")
    return base.with_name(base.name + suffix)


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root` (also resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def distinct_roots(cfg: Config) -> list[SourceConfig]:
    """One SourceConfig per distinct (dataset, root, version) of `data.sources` of the teacher's
    dataset (`teacher_train.dataset`), in order."""
    seen: dict[tuple[str, str, str], SourceConfig] = {}
    dataset = teacher_dataset(cfg)
    for s in cfg.data.sources:
        if s.name == dataset:
            seen.setdefault((s.name, str(Path(s.root)), s.version), s)
    return list(seen.values())


def _lookup(dataset: str, labels_lookup: np.ndarray | None) -> np.ndarray:
    """(256,) uint8 lookup of 8-bit class-map ids: the source's own, else the dataset's official one."""
    if labels_lookup is None and dataset == "semantickitti":
        labels_lookup = semantickitti_lookup()
    if labels_lookup is None:
        raise DatasetLayoutError(
            f"{dataset}: the root has no label tables (nuScenes-lidarseg), so its class maps "
            f"cannot be mapped to the downstream classes"
        )
    out = np.full(CLASS_MAP_VALUES, UNMAPPED, dtype=np.uint8)
    n = min(CLASS_MAP_VALUES, len(labels_lookup))
    out[:n] = labels_lookup[:n]
    return out


def _pair_of(root: Path, image: str, chunk: str, target: str) -> ImagePair | PairError:
    path = Path(image)
    if not inside(root, path):
        return PairError(image, f"image path leaves the dataset root {root}")
    try:
        maps = [class_map_path(root, path, s) for s in (CLASS_SUFFIX, DEPTH_SUFFIX, NORMAL_SUFFIX)]
    except ValueError:
        return PairError(image, f"image path is not under the dataset root {root}")
    pair = ImagePair(path, maps[0], chunk, maps[1], maps[2])
    for side in pair.needed(target):
        if not inside(root, side):
            return PairError(str(side), f"side output path leaves the dataset root {root}")
    return pair


def _list_root(src: SourceConfig, split: str, cameras: list[str], listing: Listing) -> None:
    """Append the pairs of one root's split to `listing` (and those refused to its `bad`)."""
    if not (Path(src.root) / SIDE_DIR).is_dir():
        raise DatasetLayoutError(
            f"{src.root}: no {SIDE_DIR}/ folder; write the world with `hvdistill synth --side-outputs`"
        )
    source = build_source(dataclasses.replace(src, split=split, split_file=""), cameras)
    root = Path(src.root)
    for chunk in source.chunks():
        for key in source.keys(chunk):
            plan = source.plan(key)
            if plan.error is not None:
                listing.bad.append(PairError(*plan.error))
                continue
            if plan.labels is not None and listing.lookup is None and listing.target == "classes":
                listing.lookup = _lookup(src.name, plan.labels.lookup)
            for cam in plan.cameras:
                found = _pair_of(root, cam.image, chunk, listing.target)
                (listing.bad if isinstance(found, PairError) else listing.pairs).append(found)


def list_pairs(cfg: Config, split: str) -> Listing:
    """Every (image, side outputs) pair of `split` over the distinct roots of `data.sources`.

    Raises DatasetLayoutError when a root cannot be opened or has no side outputs folder (the
    world was written without `--side-outputs`).
    """
    sources = distinct_roots(cfg)
    target = cfg.teacher_train.target
    listing = Listing(sources[0].name, [s.root for s in sources], [], None, [], target)
    for src in sources:
        _list_root(src, split, list(cfg.data.cameras), listing)
    if listing.lookup is None and target == "classes":
        listing.lookup = _lookup(listing.dataset, None)
    return listing


def _read_class_map(path: Path, max_pixels: int) -> np.ndarray:
    """(H, W) uint8 ids of an 8-bit class map; SampleReadError when it is not one."""
    return np.asarray(_read_map(path, max_pixels, "class map", ("L", "P")), dtype=np.uint8)  # (H, W)


def read_pair(pair: ImagePair, data: DataConfig, lookup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 classes at the stored resolution.

    Raises SampleReadError for a damaged image or class map (see the module docstring).
    """
    limit = image_pixel_limit(data)
    image = read_image(pair.image.name, pair.image, max_pixels=limit)  # (H0, W0, 3)
    raw = _read_class_map(pair.class_map, limit)  # (H0, W0)
    if raw.shape != image.shape[:2]:
        raise SampleReadError(
            pair.class_map.name,
            str(pair.class_map),
            f"class map is {raw.shape[1]}x{raw.shape[0]}, image {image.shape[1]}x{image.shape[0]}",
        )
    classes = lookup[raw]  # (H0, W0)
    if (classes == UNMAPPED).any():
        ids = np.unique(raw[classes == UNMAPPED])[:UNKNOWN_SHOWN].tolist()
        raise SampleReadError(pair.class_map.name, str(pair.class_map), f"ids {ids} are not dataset classes")
    size = stored_size((image.shape[1], image.shape[0]), data)
    stored = resize_image(image, size)  # (H, W, 3), may be a read-only view of the decoded file
    return (stored if stored.flags.writeable else stored.copy()), upsample_nearest(classes, size)


def _read_map(path: Path, max_pixels: int, what: str, modes: tuple[str, ...]) -> np.ndarray:
    """The decoded map at `path` if its mode is one of `modes`; SampleReadError when it is not."""
    if not path.is_file():
        raise SampleReadError(path.name, str(path), f"{what} missing")
    im = open_image(path.name, path, max_pixels, what)
    try:
        with im:
            if im.mode not in modes:
                raise SampleReadError(path.name, str(path), f"{what} has mode {im.mode}, not {modes[0]}")
            im.load()
            return np.asarray(im)  # (H, W) or (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleReadError(path.name, str(path), f"cannot decode {what}: {exc}") from None


def _same_size(path: Path, what: str, got: tuple[int, ...], image: tuple[int, ...]) -> None:
    if got[:2] != image[:2]:
        raise SampleReadError(
            path.name, str(path), f"{what} is {got[1]}x{got[0]}, image {image[1]}x{image[0]}"
        )


def read_geometry(pair: ImagePair, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W, 4) float32 depth (metres, 0 = none) + unit normal (0 = none).

    At the stored resolution (nearest for the maps). Raises SampleReadError for damage.
    """
    limit = image_pixel_limit(data)
    image = read_image(pair.image.name, pair.image, max_pixels=limit)  # (H0, W0, 3)
    depth = _read_map(pair.depth_map, limit, "depth map", DEPTH_MODES)  # (H0, W0)
    _same_size(pair.depth_map, "depth map", depth.shape, image.shape)
    rgb = _read_map(pair.normal_map, limit, "normal map", ("RGB",))  # (H0, W0, 3) uint8
    _same_size(pair.normal_map, "normal map", rgb.shape, image.shape)
    size = stored_size((image.shape[1], image.shape[0]), data)
    depth, rgb = upsample_nearest(depth, size), upsample_nearest(rgb, size)  # (H, W), (H, W, 3) raw
    normal = rgb.astype(np.float32) / NORMAL_SCALE - 1.0  # (H, W, 3)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
    normal[~rgb.any(axis=-1)] = 0.0
    metres = depth.astype(np.float32)[..., None] / DEPTH_SCALE  # (H, W, 1)
    stored = resize_image(image, size)  # (H, W, 3)
    target = np.concatenate([metres, normal], axis=-1)  # (H, W, 4)
    return (stored if stored.flags.writeable else stored.copy()), target
