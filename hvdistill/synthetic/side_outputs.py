"""Per-pixel class and depth maps written beside the dataset formats (opt-in).

For a camera image stored at `<root>/<relpath>` (e.g. `samples/CAM_FRONT/x.jpg` or
`sequences/00/image_2/000000.png`), the side outputs are
`<root>/side_outputs/<relpath without suffix>_class.png` and `..._depth.png`:
- class: 8-bit PNG of the dataset's own label space: the nuScenes-lidarseg index (0-31) for the
  nuScenes layout, the SemanticKITTI raw label id for the SemanticKITTI layout; 0 where the ray
  hits nothing (sky).
- depth: 16-bit PNG of the camera z in millimetres (0 = no hit or beyond 65.535 m).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE_DIR = "side_outputs"
DEPTH_SCALE = 1000.0  # stored value = metres * DEPTH_SCALE


def side_output_paths(root: str | Path, image_relpath: str | Path) -> tuple[Path, Path]:
    """(class map path, depth map path) of the image at `root/image_relpath`."""
    base = Path(root) / SIDE_DIR / Path(image_relpath).with_suffix("")
    return base.with_name(base.name + "_class.png"), base.with_name(base.name + "_depth.png")


def write_side_outputs(
    root: str | Path, image_relpath: str | Path, labels: np.ndarray, depth: np.ndarray
) -> None:
    """Write the (H, W) label map (uint8 label space) and the (H, W) depth in metres."""
    class_path, depth_path = side_output_paths(root, image_relpath)
    class_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8)).save(class_path)
    mm = np.round(np.asarray(depth, dtype=np.float64) * DEPTH_SCALE)
    mm = np.where((mm > 0) & (mm < 65536), mm, 0).astype(np.uint16)
    Image.fromarray(mm).save(depth_path)


def read_side_outputs(root: str | Path, image_relpath: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 label map and (H, W) float32 depth in metres (0 = none)."""
    class_path, depth_path = side_output_paths(root, image_relpath)
    labels = np.asarray(Image.open(class_path), dtype=np.uint8)
    depth = np.asarray(Image.open(depth_path), dtype=np.float32) / DEPTH_SCALE
    return labels, depth
