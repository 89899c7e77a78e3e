"""The synthetic LiDAR+camera driving world, written in real formats: nuScenes, SemanticKITTI, Argoverse 2.

Files: classes.py (the one class table and its nuScenes / SemanticKITTI labels), world.py (road
and world types), layout.py (`build_world`: where everything stands), primitives.py (analytic
shapes and their ray intersections), sensors.py (LiDAR and camera rig, ray grids, culling),
raycast.py (nearest hits), render.py (image shading and LiDAR intensity), frame.py
(`generate_frame`), nuscenes_writer.py / nuscenes_tables.py (nuScenes layout),
kitti_writer.py (SemanticKITTI layout), argoverse2_writer.py / argoverse2_rig.py (Argoverse 2
sensor layout; its two-unit LiDAR and seven ring cameras), side_outputs.py (per-pixel class and
depth maps), cli.py (`hvdistill synth`). The pictures of docs/synthetic-world.md are made by
docs/make_synthetic_pictures.py.
"""

from hvdistill.synthetic.argoverse2_writer import write_argoverse2
from hvdistill.synthetic.frame import Frame, generate_frame
from hvdistill.synthetic.kitti_writer import write_semantickitti
from hvdistill.synthetic.nuscenes_writer import write_nuscenes
from hvdistill.synthetic.side_outputs import read_side_outputs, side_output_paths

__all__ = [
    "Frame",
    "generate_frame",
    "write_argoverse2",
    "write_nuscenes",
    "write_semantickitti",
    "read_side_outputs",
    "side_output_paths",
]
