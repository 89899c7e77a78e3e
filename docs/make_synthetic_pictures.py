"""Makes the pictures and the class table of docs/synthetic-world.md from the synthetic world.

    .venv/bin/python docs/make_synthetic_pictures.py [--out DIR] [--no-stats]

Writes under --out (default: docs/images beside this script, whatever the working directory):
synthetic-cameras.png (the six cameras of one frame), synthetic-classes.png (CAM_FRONT, its class
map, and the sweep projected onto it coloured by class), synthetic-bev.png (a sweep from above,
coloured by class). Prints the points-per-class table of a default-size dataset (SynthConfig
defaults) as Markdown. A docs tool, not part of the library: nothing under hvdistill/ imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from nuscenes.utils.color_map import get_colormap
from PIL import Image, ImageDraw

from hvdistill.config import SynthConfig
from hvdistill.geometry.projection import project_points
from hvdistill.geometry.transforms import invert_transform
from hvdistill.synthetic.classes import WORLD_CLASSES
from hvdistill.synthetic.frame import Frame, build_rig, generate_frame
from hvdistill.synthetic.layout import build_world

BEV_RANGE, BEV_PIXELS = 50.0, 800  # metres either side of the LiDAR, image size
IMAGES = Path(__file__).resolve().parent / "images"
PICTURE_SIZE = (480, 270)  # the camera pictures' image size (the BEV uses the default sweep)


def class_colours() -> np.ndarray:
    """(NUM_WORLD_CLASSES, 3) uint8: the devkit's colour of each class's nuScenes category."""
    cmap = get_colormap()
    cols = np.array([cmap[c.nuscenes_name] for c in WORLD_CLASSES], dtype=np.uint8)
    cols[0] = (255, 255, 255)
    for name, colour in (("trunk", (120, 80, 40)), ("pole", (90, 90, 200)), ("traffic_sign", (250, 220, 0))):
        cols[[c.name for c in WORLD_CLASSES].index(name)] = colour
    return cols


def camera_mosaic(frame: Frame) -> Image.Image:
    """The six images in the nuScenes layout: front row FL F FR, back row BL B BR."""
    by = {c.name: c.image for c in frame.cameras}
    top = np.concatenate([by["CAM_FRONT_LEFT"], by["CAM_FRONT"], by["CAM_FRONT_RIGHT"]], axis=1)
    bottom = np.concatenate([by["CAM_BACK_LEFT"], by["CAM_BACK"], by["CAM_BACK_RIGHT"]], axis=1)
    return Image.fromarray(np.concatenate([top, bottom], axis=0))


def class_panel(frame: Frame) -> Image.Image:
    """CAM_FRONT | its class map | the sweep projected onto it, coloured by class."""
    cols = class_colours()
    cam = frame.cameras[0]
    h, w = cam.classes.shape
    chain = (
        invert_transform(cam.cam_to_ego)
        @ invert_transform(cam.ego_to_global)
        @ frame.ego_to_global
        @ frame.lidar_to_ego
    )
    proj = project_points(frame.points[:, :3], chain, cam.intrinsics, w, h)
    overlay = Image.fromarray((cam.image * 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    for (u, v), c in zip(proj.uv, frame.classes[proj.index]):
        draw.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=tuple(int(x) for x in cols[c]))
    return Image.fromarray(np.concatenate([cam.image, cols[cam.classes], np.asarray(overlay)], axis=1))


def bev(frame: Frame) -> Image.Image:
    """The sweep from above in the ego frame (x up the picture), coloured by class."""
    cols = class_colours()
    xyz = frame.points[:, :3] @ frame.lidar_to_ego[:3, :3].T + frame.lidar_to_ego[:3, 3]
    scale = BEV_PIXELS / (2 * BEV_RANGE)
    row = ((BEV_RANGE - xyz[:, 0]) * scale).astype(int)
    col = ((BEV_RANGE - xyz[:, 1]) * scale).astype(int)
    keep = (row >= 0) & (row < BEV_PIXELS) & (col >= 0) & (col < BEV_PIXELS)
    img = np.full((BEV_PIXELS, BEV_PIXELS, 3), 20, np.uint8)
    order = np.argsort(xyz[keep, 2])  # higher points drawn last
    for dr in (0, 1):
        for dc in (0, 1):
            r = np.clip(row[keep][order] + dr, 0, BEV_PIXELS - 1)
            c = np.clip(col[keep][order] + dc, 0, BEV_PIXELS - 1)
            img[r, c] = cols[frame.classes[keep][order]]
    return Image.fromarray(img)


def class_statistics(cfg: SynthConfig) -> str:
    """Markdown table of points per class over cfg.scenes x cfg.frames_per_scene frames."""
    counts = np.zeros(len(WORLD_CLASSES), np.int64)
    pixels = np.zeros(len(WORLD_CLASSES), np.int64)
    rig = build_rig(cfg)
    for si in range(cfg.scenes):
        world = build_world(cfg, si, cfg.frame_interval_s * max(cfg.frames_per_scene - 1, 0))
        for fi in range(cfg.frames_per_scene):
            frame = generate_frame(cfg, si, fi, world=world, rig=rig)
            counts += np.bincount(frame.classes, minlength=len(WORLD_CLASSES))
            for cam in frame.cameras:
                pixels += np.bincount(cam.classes.ravel(), minlength=len(WORLD_CLASSES))
    lines = [
        "| class | nuScenes category (index) | SemanticKITTI id | points | share | image pixels |",
        "|---|---|---|---|---|---|",
    ]
    for c in WORLD_CLASSES[1:]:
        lines.append(
            f"| {c.name} | {c.nuscenes_name} ({c.nuscenes_index}) | {c.kitti_id} | {counts[c.id]:,} | "
            f"{100 * counts[c.id] / counts.sum():.2f}% | {pixels[c.id]:,} |"
        )
    lines.append(f"| (sky) | | | | | {pixels[0]:,} |")
    return "\n".join(lines)


def make_pictures(out: Path, cfg: SynthConfig, picture_cfg: SynthConfig) -> list[Path]:
    """The three pictures under `out`: cameras and classes of `picture_cfg`, the BEV of `cfg`."""
    out.mkdir(parents=True, exist_ok=True)
    small = generate_frame(picture_cfg, 0, 1)
    written = [out / "synthetic-cameras.png", out / "synthetic-classes.png", out / "synthetic-bev.png"]
    camera_mosaic(small).save(written[0])
    class_panel(small).save(written[1])
    bev(generate_frame(cfg, 0, 1)).save(written[2])
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=IMAGES, help=f"output folder (default {IMAGES})")
    p.add_argument("--no-stats", action="store_true", help="skip the class statistics")
    args = p.parse_args(argv)
    cfg = SynthConfig()
    width, height = PICTURE_SIZE
    written = make_pictures(args.out, cfg, SynthConfig(image_width=width, image_height=height))
    print("wrote " + ", ".join(str(w) for w in written))
    if not args.no_stats:
        print(class_statistics(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
