"""Record builders for the nuScenes JSON tables of the synthetic dataset.

Static tables (category with the lidarseg `index`, attribute, visibility, sensor), scene names
drawn from the devkit's official split lists, calibrated sensors from the rig, ego poses, and
sample_annotation / instance records from the world's annotated objects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from nuscenes.utils.splits import create_splits_scenes

from hvdistill.config import NUSCENES_CAMERAS
from hvdistill.geometry.transforms import rotation_to_quaternion, yaw_rotation
from hvdistill.synthetic.classes import NUSCENES_LIDARSEG_CATEGORIES, WORLD_CLASSES
from hvdistill.synthetic.frame import Frame, Rig
from hvdistill.synthetic.world import World

Tokenizer = Callable[..., str]
LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
ANNOTATION_RANGE = 60.0  # metres from the ego within which visible objects are annotated


def static_tables(token: Tokenizer) -> dict[str, list[dict]]:
    """All 14 tables, with the static ones filled and the others empty."""
    names = (
        "category",
        "attribute",
        "visibility",
        "instance",
        "sensor",
        "calibrated_sensor",
        "ego_pose",
        "log",
        "scene",
        "sample",
        "sample_data",
        "sample_annotation",
        "map",
        "lidarseg",
    )
    tables: dict[str, list[dict]] = {n: [] for n in names}
    tables["category"] = [
        {"token": token("category", name), "name": name, "description": name, "index": i}
        for i, name in enumerate(NUSCENES_LIDARSEG_CATEGORIES)
    ]
    tables["attribute"] = [{"token": token("attribute", a), "name": a, "description": a} for a in ATTRIBUTES]
    tables["visibility"] = [
        {"token": t, "level": lvl, "description": f"visibility {lvl}"} for t, lvl in VISIBILITY
    ]
    tables["sensor"] = [
        {"token": token("sensor", ch), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"}
        for ch in ("LIDAR_TOP", *NUSCENES_CAMERAS)
    ]
    return tables


def scene_names(n: int) -> list[str]:
    """n real nuScenes scene names alternating train / val (mini_train / mini_val ones first)."""
    splits = create_splits_scenes()
    train = [s for s in splits["mini_train"] if s in splits["train"]]
    train += [s for s in splits["train"] if s not in train]
    val = list(splits["mini_val"]) + [s for s in splits["val"] if s not in splits["mini_val"]]
    return [(train if i % 2 == 0 else val)[i // 2] for i in range(n)]


def log_record(log_token: str, scene_index: int, vehicle: str) -> dict:
    return {
        "token": log_token,
        "logfile": f"{vehicle}-synthetic-{scene_index:03d}",
        "vehicle": vehicle,
        "date_captured": "2018-07-24",
        "location": LOCATIONS[scene_index % len(LOCATIONS)],
    }


def pose_fields(transform: np.ndarray) -> dict:
    """{"translation": [x, y, z], "rotation": [w, x, y, z]} of a (4, 4) transform."""
    t = np.asarray(transform, dtype=np.float64)
    return {
        "translation": [float(v) for v in t[:3, 3]],
        "rotation": [float(v) for v in rotation_to_quaternion(t[:3, :3])],
    }


def calibrated_sensors(calib: dict[str, str], rig: Rig, token: Tokenizer) -> list[dict]:
    rows = [
        {
            "token": calib["LIDAR_TOP"],
            "sensor_token": token("sensor", "LIDAR_TOP"),
            **pose_fields(rig.lidar.lidar_to_ego),
            "camera_intrinsic": [],
        }
    ]
    for cam in rig.cameras:
        rows.append(
            {
                "token": calib[cam.name],
                "sensor_token": token("sensor", cam.name),
                **pose_fields(cam.cam_to_ego),
                "camera_intrinsic": cam.intrinsics.tolist(),
            }
        )
    return rows


def _attribute(name: str, token: Tokenizer) -> list[str]:
    if name in ("car", "truck", "bus", "motorcycle"):
        return [token("attribute", "vehicle.parked")]
    if name == "bicycle":
        return [token("attribute", "cycle.without_rider")]
    if name == "pedestrian":
        return [token("attribute", "pedestrian.standing")]
    return []


def annotations(
    world: World, frame: Frame, sample_token: str, seed: int, si: int, token: Tokenizer
) -> list[dict]:
    """sample_annotation records (prev/next unset) of the objects the sweep sees."""
    counts = np.bincount(frame.instances, minlength=len(world.objects) + 2)
    ego_xy = frame.ego_to_global[:2, 3]
    heading = float(np.arctan2(world.local_to_global[1, 0], world.local_to_global[0, 0]))
    rows = []
    for obj in world.objects:
        n = int(counts[obj.inst]) if obj.inst < len(counts) else 0
        centre = world.local_to_global[:3, :3] @ obj.centre + world.local_to_global[:3, 3]
        if n == 0 or np.linalg.norm(centre[:2] - ego_xy) > ANNOTATION_RANGE:
            continue
        cls = WORLD_CLASSES[obj.cls]
        rows.append(
            {
                "token": token(sample_token, "ann", obj.inst),
                "sample_token": sample_token,
                "instance_token": token(seed, si, "instance", obj.inst),
                "visibility_token": "4",
                "attribute_tokens": _attribute(cls.name, token),
                "translation": [float(v) for v in centre],
                "size": [float(v) for v in obj.size],
                "rotation": [float(v) for v in rotation_to_quaternion(yaw_rotation(obj.yaw + heading))],
                "prev": "",
                "next": "",
                "num_lidar_pts": n,
                "num_radar_pts": 0,
                "_category": cls.nuscenes_name,
            }
        )
    return rows


def chain_annotations(per_frame: list[list[dict]]) -> list[dict]:
    """Flatten per-frame annotations, linking each instance's records with prev/next."""
    last: dict[str, dict] = {}
    out = []
    for rows in per_frame:
        for row in rows:
            prev = last.get(row["instance_token"])
            if prev is not None:
                prev["next"], row["prev"] = row["token"], prev["token"]
            last[row["instance_token"]] = row
            out.append(row)
    return out


def instances(world: World, per_frame: list[list[dict]], seed: int, si: int, token: Tokenizer) -> list[dict]:
    """instance records for every object annotated at least once (strips the helper field)."""
    by_inst: dict[str, list[dict]] = {}
    for rows in per_frame:
        for row in rows:
            by_inst.setdefault(row["instance_token"], []).append(row)
    out = []
    for inst_token, rows in by_inst.items():
        out.append(
            {
                "token": inst_token,
                "category_token": token("category", rows[0]["_category"]),
                "nbr_annotations": len(rows),
                "first_annotation_token": rows[0]["token"],
                "last_annotation_token": rows[-1]["token"],
            }
        )
        for row in rows:
            row.pop("_category")
    return out
