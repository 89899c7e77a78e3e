"""Reading the raw files both datasets share, turning every kind of damage into SampleReadError.

Point records (float32 columns), per-point label files (fixed-width integers), camera images
and split files. Each reader checks what a damaged file looks like (missing, empty, size not a
multiple of the record, non-finite values, undecodable image) and raises `SampleReadError`
naming the sample key and the file, so sharding can quarantine the sample instead of crashing.

Images are opened header first: the declared size is checked against the size the dataset
records (when it does) and against a pixel limit before anything is decoded, so a file that
declares 20000 x 10000 pixels (a decompression bomb, or a wrong file) is one bad sample, not a
process killed for memory or a DecompressionBombError that fails a whole sharding unit. The
limit is `data.max_image_pixels` (`image_pixel_limit`, from the configured stored resolution)
where the caller has the config, else that of the default config; Pillow's own bomb check is
turned into the same per-sample error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hvdistill.config import DataConfig
from hvdistill.config.data import image_pixel_limit
from hvdistill.data.errors import DatasetLayoutError, SampleReadError

POINT_DIMS = 4  # x, y, z, intensity / remission
DEFAULT_MAX_PIXELS = image_pixel_limit(DataConfig())  # readers without a config use the default's


def check_cameras(dataset: str, requested: list[str], available: list[str] | tuple[str, ...]) -> list[str]:
    """`requested` if every name is one of the dataset's cameras, else a DatasetLayoutError."""
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise DatasetLayoutError(f"{dataset} has no camera {unknown}; choose from {list(available)}")
    return list(requested)


def _file_size(key: str, path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise SampleReadError(key, path, "file is missing") from None
    except OSError as exc:
        raise SampleReadError(key, path, f"cannot stat file: {exc}") from None


def read_records(key: str, path: Path, dtype: np.dtype, columns: int) -> np.ndarray:
    """(N, columns) array of a flat binary file of `columns`-wide `dtype` records."""
    record = np.dtype(dtype).itemsize * columns
    size = _file_size(key, path)
    if size == 0:
        raise SampleReadError(key, path, "file is empty")
    if size % record:
        raise SampleReadError(
            key,
            path,
            f"size {size} B is not a multiple of the {record} B record "
            f"({columns} x {np.dtype(dtype).name}): truncated or corrupt",
        )
    try:
        flat = np.fromfile(path, dtype=dtype)
    except OSError as exc:
        raise SampleReadError(key, path, f"cannot read file: {exc}") from None
    return flat.reshape(-1, columns)


def read_points(key: str, path: Path, columns: int) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity from a float32 file with `columns` columns per point."""
    records = read_records(key, path, np.float32, columns)  # (N, columns)
    points = np.ascontiguousarray(records[:, :POINT_DIMS])  # (N, 4)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        raise SampleReadError(key, path, f"{bad} of {len(points)} points are NaN or infinite")
    return points


def read_point_labels(key: str, path: Path, dtype: np.dtype, n_points: int) -> np.ndarray:
    """(N,) raw per-point labels; their count must equal the point count."""
    labels = read_records(key, path, dtype, 1)[:, 0]  # (N,)
    if len(labels) != n_points:
        raise SampleReadError(
            key,
            path,
            f"{len(labels)} labels for {n_points} points: label file does not "
            "belong to this point cloud or is truncated",
        )
    return labels


def open_image(
    key: str, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image"
) -> Image.Image:
    """The image at `path`, opened (header only) and its size checked against `max_pixels`.

    Pillow's DecompressionBombWarning / Error become a SampleReadError like any other damage; the
    caller decodes (`load()`) inside its own `with` block.
    """
    _file_size(key, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleReadError(key, path, f"{what} refused before decoding: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SampleReadError(key, path, f"cannot decode {what}: {exc}") from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise SampleReadError(
            key,
            path,
            f"{what} declares {width}x{height} = {width * height} pixels, more than the {max_pixels} allowed "
            f"(data.max_image_pixels); refused before decoding",
        )
    return im


def read_image(
    key: str, path: Path, expected_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """(H, W, 3) uint8 RGB; `expected_size` = (width, height) the metadata promises, if any.

    Both the expected size and `max_pixels` are checked from the header, before decoding.
    """
    im = open_image(key, path, max_pixels)
    try:
        with im:
            if expected_size is not None and im.size != tuple(expected_size):
                raise SampleReadError(
                    key,
                    path,
                    f"image is {im.size[0]}x{im.size[1]} but the dataset records "
                    f"{expected_size[0]}x{expected_size[1]}",
                )
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleReadError(key, path, f"cannot decode image: {exc}") from None
    return rgb


def read_split_file(path: str | Path) -> list[str]:
    """Names listed one per line; blank lines and `#` comments skipped, order kept, deduplicated."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DatasetLayoutError(f"split file {path}: cannot read it ({exc})") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    return list(dict.fromkeys(n for n in names if n))
