"""docs/make_synthetic_pictures.py still runs: the three pictures and the class table, on a tiny world."""

from __future__ import annotations

import importlib.util

from PIL import Image

from hvdistill.config import SynthConfig
from hvdistill.synthetic.classes import WORLD_CLASSES
from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "docs" / "make_synthetic_pictures.py"
TINY = dict(image_width=96, image_height=54, lidar_beams=8, lidar_points_per_beam=200)


def load_script():
    """The docs script as a module (docs/ is not a package; loaded by path, not via sys.path)."""
    spec = importlib.util.spec_from_file_location("make_synthetic_pictures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pictures_are_written_with_their_layout(tmp_path):
    script = load_script()
    cfg = SynthConfig(**TINY)
    written = script.make_pictures(tmp_path / "images", cfg, cfg)
    assert [p.name for p in written] == [
        "synthetic-cameras.png",
        "synthetic-classes.png",
        "synthetic-bev.png",
    ]
    assert Image.open(written[0]).size == (3 * 96, 2 * 54)  # two rows of three cameras
    assert Image.open(written[1]).size == (3 * 96, 54)  # image | class map | projected sweep
    assert Image.open(written[2]).size == (script.BEV_PIXELS, script.BEV_PIXELS)


def test_class_table_has_a_row_per_class():
    table = load_script().class_statistics(SynthConfig(**TINY, scenes=1, frames_per_scene=1))
    rows = table.splitlines()
    assert rows[0].startswith("| class |") and len(rows) == 2 + len(WORLD_CLASSES)  # header, rule, sky
    assert all(f"| {c.name} |" in table for c in WORLD_CLASSES[1:])
