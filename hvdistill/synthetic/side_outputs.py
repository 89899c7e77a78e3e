"""Per-pixel class, depth and surface-normal maps written beside the dataset formats (opt-in).

For a camera image stored at `<root>/<relpath>` (e.g. `samples/CAM_FRONT/x.jpg` or
`sequences/00/image_2/000000.png`), the side outputs are
`<root>/side_outputs/<relpath without suffix>_class.png`, `..._depth.png` and `..._normal.png`:
- class: 8-bit PNG of the dataset's own label space: the nuScenes-lidarseg index (0-31) for the
  nuScenes layout, the SemanticKITTI raw label id for the SemanticKITTI layout; 0 where the ray
  hits nothing (sky).
- depth: 16-bit PNG of the camera z in millimetres (0 = no hit or beyond 65.535 m).
- normal: 8-bit RGB PNG of the unit surface normal in the camera frame (x right, y down,
  z forward), turned to face the camera; channel value v encodes n = 2 v / 255 - 1 (so v =
  round(127.5 (n + 1)), about 0.45 degrees of quantisation); (0, 0, 0) = no surface (sky),
  which no unit vector encodes to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE_DIR = "side_outputs"
DEPTH_SCALE = 1000.0  # stored value = metres * DEPTH_SCALE
NORMAL_SUFFIX = "_normal.png"
NORMAL_SCALE = 127.5  # stored value = (n + 1) * NORMAL_SCALE, rounded


def side_output_paths(root: str | Path, image_relpath: str | Path) -> tuple[Path, Path]:
    """(class map path, depth map path) of the image at `root/image_relpath`."""
    base = Path(root) / SIDE_DIR / Path(image_relpath).with_suffix("")
    return base.with_name(base.name + "_class.png"), base.with_name(base.name + "_depth.png")


def normal_map_path(root: str | Path, image_relpath: str | Path) -> Path:
    """The surface-normal map path of the image at `root/image_relpath`."""
    base = Path(root) / SIDE_DIR / Path(image_relpath).with_suffix("")
    return base.with_name(base.name + NORMAL_SUFFIX)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) float unit normals (0 = no surface) -> (H, W, 3) uint8 RGB, (0, 0, 0) = none."""
    n = np.asarray(normals, dtype=np.float32)
    rgb = np.clip(np.round((n + 1.0) * NORMAL_SCALE), 0, 255).astype(np.uint8)  # (H, W, 3)
    rgb[~(n != 0).any(axis=-1)] = 0
    return rgb


def decode_normals(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 unit normals, 0 where (0, 0, 0) (no surface)."""
    n = rgb.astype(np.float32) / NORMAL_SCALE - 1.0  # (H, W, 3)
    length = np.linalg.norm(n, axis=-1, keepdims=True)  # (H, W, 1)
    n = n / np.maximum(length, 1e-6)
    n[~rgb.any(axis=-1)] = 0.0
    return n


def write_side_outputs(
    root: str | Path, image_relpath: str | Path, labels: np.ndarray, depth: np.ndarray, normals: np.ndarray
) -> None:
    """Write the (H, W) label map (uint8 label space), (H, W) depth in metres, (H, W, 3) normals."""
    class_path, depth_path = side_output_paths(root, image_relpath)
    class_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8)).save(class_path)
    mm = np.round(np.asarray(depth, dtype=np.float64) * DEPTH_SCALE)
    mm = np.where((mm > 0) & (mm < 65536), mm, 0).astype(np.uint16)
    Image.fromarray(mm).save(depth_path)
    Image.fromarray(encode_normals(normals)).save(normal_map_path(root, image_relpath), compress_level=1)


def read_side_outputs(root: str | Path, image_relpath: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 label map and (H, W) float32 depth in metres (0 = none)."""
    class_path, depth_path = side_output_paths(root, image_relpath)
    labels = np.asarray(Image.open(class_path), dtype=np.uint8)
    depth = np.asarray(Image.open(depth_path), dtype=np.float32) / DEPTH_SCALE
    return labels, depth


def read_normal_map(root: str | Path, image_relpath: str | Path) -> np.ndarray:
    """(H, W, 3) float32 unit camera-frame normals, 0 where there is no surface."""
    with Image.open(normal_map_path(root, image_relpath)) as im:
        return decode_normals(np.asarray(im.convert("RGB"), dtype=np.uint8))
