"""`hvdistill teacher train CONFIG [key=value ...]`: train the synthetic world's image teacher.

`teacher_train.target=classes` (default) trains on the class maps; `teacher_train.target=geometry`
trains a class-free teacher on the depth and surface-normal maps (docs/teacher.md).

Reads the `teacher_train`, `data`, `geometry` and `augment` sections (plus `model.image` for the
architecture, input statistics and the stride pretraining uses), trains, writes
`teacher_train.output` (torchvision weights for a ResNet, DINOv2-release weights for a ViT) and
its `.json`, and prints the overrides that make pretraining load the result. Config mistakes,
unreadable roots and too much damaged data end with exit status 2 and a message, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hvdistill.config import RUN_SECTIONS, ConfigError, load_config
from hvdistill.data.errors import DatasetLayoutError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvdistill teacher", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser(
        "train", help="train the image teacher on a synthetic world's class maps (or depth + normal maps)"
    )
    train.add_argument("config", nargs="?", default=None, help="YAML diff over the defaults")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied in order")
    return parser


def _scores(val: dict) -> str:
    """The held-out scores in one phrase: class metrics or geometry metrics."""
    if "miou" in val:
        return f"pixel mIoU {val['miou']:.3f}, accuracy {val['accuracy']:.3f}"
    return (
        f"depth-bin accuracy {val['depth_bin_accuracy']:.3f}, abs-rel {val['depth_abs_rel']:.3f}, "
        f"normal error {val['normal_angle_mean_deg']:.1f} deg ({val['normal_within_11.25_deg']:.3f} "
        f"within 11.25 deg, {val['normal_within_30_deg']:.3f} within 30)"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hvdistill.teacher.backbone import pretrain_overrides
    from hvdistill.teacher.train import NonFiniteTeacherLoss, TeacherDataError, train_teacher

    try:
        cfg = load_config(config, overrides, sections=RUN_SECTIONS["teacher"])
        result = train_teacher(cfg)
    except (ConfigError, DatasetLayoutError, TeacherDataError, NonFiniteTeacherLoss, ValueError) as err:
        print(f"hvdistill teacher: {err}", file=sys.stderr)
        return 2
    print(
        f"teacher ({result.target}): {result.arch}, {result.steps} steps in {result.seconds:.0f} s "
        f"({result.steps_per_second:.2f} steps/s), final loss {result.final_loss:.3f}; {_scores(result.val)} "
        f"over {result.val['images']} {result.val['split']} images; {len(result.bad_pairs)} bad pairs"
    )
    print(f"wrote {result.weights} and {result.weights.removesuffix('.pt')}.json")
    print(f"pretrain with: {pretrain_overrides(result.arch, result.weights)}")
    return 0
