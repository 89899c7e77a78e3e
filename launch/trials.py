"""A sweep's trials: their names, their keys (by the backbone's content), their configs and tags,
and the settings every trial of a sweep shares.

A trial is one fine-tuning run of the sweep's grid: a checkpoint x label fraction x seed (x
learning rates). Its key hashes the sha256 of the checkpoint's backbone.pt ("random" for random
init) with its coordinates and its readout (`finetune.linear_probe`, `finetune.frozen_probe`), so
a checkpoint pretrained again into the same directory gets new keys. Its directory name starts
with the checkpoint's label, reduced to letters, digits, `.`, `_` and `-` (`safe_label`), so no
label (a `runs:/` id with `/` and `..` in it, a run directory named oddly) leads out of
`<sweep dir>/trials/`. launch/sweep.py runs
them; everything here is plain computation (plus reading the checkpoints to hash them).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

from hvdistill.config import Config, ConfigError, flatten
from hvdistill.config.downstream import RANDOM_INIT
from hvdistill.eval.report import TAG_PREFIX, TRIAL_TAG

TRIALS_DIR = "trials"
KEY_CHARS = 16  # hex characters of the trial key (sha256 of its coordinates)
LABEL_CHARS = 40  # a checkpoint label's length in trial names
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_label(text: str) -> str:
    """`text` as a name component: letters, digits, '.', '_', '-' (others become '_'), starting with a
    letter or digit, at most LABEL_CHARS long; "checkpoint" when nothing is left."""
    cleaned = _UNSAFE.sub("_", text).lstrip("._-")[:LABEL_CHARS]
    return cleaned or "checkpoint"


def checkpoint_labels(checkpoints: list[str]) -> list[str]:
    """Short names for the table and the trial directories: random, the run directory's name,
    run-<id>; reduced to safe characters (`safe_label`) and made unique."""
    labels: list[str] = []
    for c in checkpoints:
        if c == RANDOM_INIT:
            label = RANDOM_INIT
        elif c.startswith("runs:/"):
            label = "run-" + c.removeprefix("runs:/").strip("/")[:8]
        else:
            p = Path(c)
            label = p.parent.name if p.suffix == ".pt" else p.name
        label = safe_label(label)
        labels.append(label if label not in labels else f"{label}_{len(labels)}")
    return labels


def backbone_digests(cfg: Config, sweep_dir: Path) -> dict[str, str]:
    """checkpoint -> the sha256 of its backbone.pt ("random" for random init), each found as a trial
    would find it (a runs:/ checkpoint downloaded once, to a temporary folder); two checkpoints
    holding the same backbone are refused."""
    from hvdistill.tracking import tracking_uri

    uri = tracking_uri(cfg.tracking, sweep_dir)  # the store every trial uses
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hvdistill-sweep-") as tmp:
        for i, ckpt in enumerate(cfg.sweep.checkpoints):
            if ckpt == RANDOM_INIT:
                digests[ckpt] = RANDOM_INIT
                continue
            try:
                digests[ckpt] = checked_backbone(cfg, ckpt, uri, Path(tmp) / str(i))
            except (OSError, ValueError, LookupError) as exc:
                raise ConfigError([f"sweep.checkpoints[{i}]: {exc}"]) from None
    seen: dict[str, str] = {}
    for ckpt, digest in digests.items():
        if digest in seen:
            raise ConfigError(
                [f"sweep.checkpoints: {seen[digest]!r} and {ckpt!r} hold the same backbone (sha256 "
                 f"{digest[:12]}...); list it once"]
            )  # fmt: skip
        seen[digest] = ckpt
    return digests


def checked_backbone(cfg: Config, checkpoint: str, uri: str, download_dir: Path) -> str:
    """The sha256 of the checkpoint's backbone.pt, after the checks a trial would fail on: the file
    is found, its backbone.json layout fits `model.lidar` and it reads as a tensor state dict."""
    from hvdistill.eval.backbone import find_backbone, layout_problems, read_meta, read_state_dict, sha256

    files = find_backbone(checkpoint, uri, download_dir)
    problems = layout_problems(read_meta(files.meta), cfg.model.lidar, cfg.geometry.voxel_size)
    if problems:
        raise ValueError(
            f"backbone {files.weights} does not fit the configured model: " + "; ".join(problems)
        )
    read_state_dict(files.weights)
    return sha256(files.weights)


def trial_specs(cfg: Config, digests: dict[str, str]) -> list[dict[str, Any]]:
    """Every trial of a prepared config: key, name, checkpoint, label, fraction, seed, learning rates.

    `digests` is `backbone_digests(cfg, ...)`: the key hashes the backbone's content, not its path."""
    sw, ft = cfg.sweep, cfg.finetune
    lr_trunk, lr_head = sw.lr_trunk or [ft.lr_trunk], sw.lr_head or [ft.lr_head]
    lr_swept = len(lr_trunk) * len(lr_head) > 1
    specs = []
    grid = product(
        zip(sw.checkpoints, checkpoint_labels(sw.checkpoints)),
        sw.label_fractions,
        sw.seeds,
        lr_trunk,
        lr_head,
    )
    for (ckpt, label), fraction, seed, lt, lh in grid:
        coords = [digests[ckpt], float(fraction), int(seed), float(lt), float(lh), ft.linear_probe]
        coords += ["frozen_probe"] if ft.frozen_probe else []  # keys of the other readouts unchanged
        key = hashlib.sha256(json.dumps(coords).encode()).hexdigest()[:KEY_CHARS]
        lr = f"-lr{lt:g}-{lh:g}" if lr_swept else ""
        name = f"{label}-f{fraction:g}-s{seed}{lr}-{key[:8]}"
        specs.append(
            {
                "key": key,
                "name": name,
                "checkpoint": ckpt,
                "backbone_sha256": digests[ckpt],
                "label": label,
                "label_fraction": float(fraction),
                "seed": int(seed),
                "lr_trunk": float(lt),
                "lr_head": float(lh),
            }
        )
    return specs


def trial_config(cfg: Config, spec: dict[str, Any], uri: str, sweep_dir: Path) -> Config:
    """The fine-tuning config of one trial: its backbone, fraction, seed, rates; the sweep's store."""
    ft = replace(
        cfg.finetune,
        backbone="" if spec["checkpoint"] == RANDOM_INIT else spec["checkpoint"],
        label_fraction=spec["label_fraction"],
        seed=spec["seed"],
        lr_trunk=spec["lr_trunk"],
        lr_head=spec["lr_head"],
        output_dir=str(sweep_dir / TRIALS_DIR),
        run_name=spec["name"],
    )
    tracking = replace(cfg.tracking, enabled=True, uri=uri, run_name="")
    return replace(cfg, finetune=ft, tracking=tracking)


def trial_tags(spec: dict[str, Any]) -> dict[str, str]:
    tags = {TRIAL_TAG: spec["key"], "hvdistill.kind": "sweep_trial"}
    for k in ("checkpoint", "backbone_sha256", "label", "label_fraction", "seed", "lr_trunk", "lr_head"):
        tags[TAG_PREFIX + k] = str(spec[k])
    return tags


# finetune keys that are a trial's coordinates, say where it writes, or change only how fast it runs
NOT_SHARED = (
    *("backbone", "label_fraction", "seed", "lr_trunk", "lr_head", "output_dir", "run_name"),
    *("loader_workers", "eval_batch_size", "log_every", "device"),
)


def trial_settings(cfg: Config) -> dict[str, Any]:
    """What every trial of the sweep shares and a finished trial's result depends on: the
    `finetune` section (less NOT_SHARED), the shards, the voxel size and the LiDAR model, as JSON."""
    flat = {f"finetune.{k}": v for k, v in flatten(cfg.finetune).items() if k not in NOT_SHARED}
    flat.update({f"model.lidar.{k}": v for k, v in flatten(cfg.model.lidar).items()})
    flat.update({"data.shards": list(cfg.data.shards), "geometry.voxel_size": cfg.geometry.voxel_size})
    return json.loads(json.dumps(flat))


def settings_problems(before: Any, now: dict[str, Any], name: str) -> list[str]:
    """A resumed sweep must run its missing trials under the settings its finished ones had;
    otherwise the table would mix them. One line per changed key, with both ways out."""
    if not isinstance(before, dict):
        return []  # a new sweep, or one written before settings were recorded
    keys = sorted(set(before) | set(now))
    return [
        f"{k}: sweep {name!r} ran its trials with {before.get(k)!r}, the config now has {now.get(k)!r}; "
        f"set {k}={json.dumps(before.get(k)).replace(' ', '')} to finish that sweep, or give a new sweep.name"
        for k in keys
        if before.get(k) != now.get(k)
    ]
