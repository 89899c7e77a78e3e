"""Image / class-map pairs of a synthetic world, read for teacher training (docs/teacher.md).

Listing: each distinct root of `data.sources` is opened through its dataset source
(hvdistill/data/sources/) at the requested split, so split membership, the image files and the
label lookup are exactly the ones sharding and pretraining use. For every camera image at
`<root>/<relpath>` the renderer's class map is `<root>/side_outputs/<relpath without suffix>
_class.png` (written by `hvdistill synth --side-outputs`; the rule of
hvdistill/synthetic/side_outputs.py, restated here because nothing on the training path imports
the synthetic package). A path that resolves outside its root (`..`, a symlink out of it) is
counted as bad and never opened.

Reading: the image is decoded and resized to the stored resolution (`data.stored_image_*`,
bilinear), the class map taken at the same size (nearest) and mapped through the dataset's
official lookup to the downstream classes (0 = ignore). A file that cannot be decoded, has the
wrong size, declares more pixels than `data.max_image_pixels` allows (checked from its header,
before decoding: hvdistill/data/sources/files.py) or holds ids the lookup lacks yields a
`PairError` instead of a sample; the caller counts, logs and skips it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hvdistill.config import Config, DataConfig, SourceConfig
from hvdistill.config.data import image_pixel_limit
from hvdistill.data.errors import DatasetLayoutError, SampleReadError
from hvdistill.data.prepare import resize_image, stored_size, upsample_nearest
from hvdistill.data.sources import build_source
from hvdistill.data.sources.files import open_image, read_image
from hvdistill.data.sources.labels import UNMAPPED, semantickitti_lookup

SIDE_DIR = "side_outputs"  # hvdistill/synthetic/side_outputs.py: SIDE_DIR
CLASS_SUFFIX = "_class.png"
CLASS_MAP_VALUES = 256  # class maps are 8-bit
UNKNOWN_SHOWN = 5  # unknown ids a PairError names


@dataclass(frozen=True)
class ImagePair:
    """One camera image and the renderer's class map of it."""

    image: Path
    class_map: Path
    chunk: str  # scene / sequence


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
    lookup: np.ndarray  # (256,) uint8 class-map id -> downstream class, UNMAPPED where undefined
    bad: list[PairError]


def class_map_path(root: Path, image: Path) -> Path:
    """`<root>/side_outputs/<image relpath without suffix>_class.png`."""
    base = root / SIDE_DIR / image.relative_to(root).with_suffix("")
    return base.with_name(base.name + CLASS_SUFFIX)


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root` (also resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def distinct_roots(cfg: Config) -> list[SourceConfig]:
    """One SourceConfig per distinct (dataset, root, version) of `data.sources`, in order."""
    seen: dict[tuple[str, str, str], SourceConfig] = {}
    for s in cfg.data.sources:
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


def _pair_of(root: Path, image: str, chunk: str) -> ImagePair | PairError:
    path = Path(image)
    if not inside(root, path):
        return PairError(image, f"image path leaves the dataset root {root}")
    try:
        class_map = class_map_path(root, path)
    except ValueError:
        return PairError(image, f"image path is not under the dataset root {root}")
    if not inside(root, class_map):
        return PairError(str(class_map), f"class map path leaves the dataset root {root}")
    return ImagePair(path, class_map, chunk)


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
            if plan.labels is not None and listing.lookup is None:
                listing.lookup = _lookup(src.name, plan.labels.lookup)
            for cam in plan.cameras:
                found = _pair_of(root, cam.image, chunk)
                (listing.bad if isinstance(found, PairError) else listing.pairs).append(found)


def list_pairs(cfg: Config, split: str) -> Listing:
    """Every (image, class map) pair of `split` over the distinct roots of `data.sources`.

    Raises DatasetLayoutError when a root cannot be opened or has no side outputs folder (the
    world was written without `--side-outputs`).
    """
    sources = distinct_roots(cfg)
    listing = Listing(sources[0].name, [s.root for s in sources], [], None, [])  # type: ignore[arg-type]
    for src in sources:
        _list_root(src, split, list(cfg.data.cameras), listing)
    if listing.lookup is None:
        listing.lookup = _lookup(listing.dataset, None)
    return listing


def _read_class_map(path: Path, max_pixels: int) -> np.ndarray:
    """(H, W) uint8 ids of an 8-bit class map; SampleReadError when it is not one."""
    if not path.is_file():
        raise SampleReadError(path.name, str(path), "class map missing")
    im = open_image(path.name, path, max_pixels, "class map")
    try:
        with im:
            if im.mode not in ("L", "P"):
                raise SampleReadError(path.name, str(path), f"class map has mode {im.mode}, not 8-bit")
            im.load()
            return np.asarray(im, dtype=np.uint8)  # (H, W)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleReadError(path.name, str(path), f"cannot decode class map: {exc}") from None


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
