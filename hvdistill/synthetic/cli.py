"""`hvdistill synth`: generate the synthetic world in the nuScenes or SemanticKITTI layout.

    hvdistill synth --format nuscenes --scenes 2 --frames-per-scene 4 --seed 0 --out DIR
                    [--config YAML] [--width W --height H] [--version v1.0-trainval] [--side-outputs]
    hvdistill synth --format semantickitti --sequences 00 08 --out DIR ...
    hvdistill synth docs [--out docs/images]      regenerate the pictures of docs/synthetic-world.md

Values come from the `synth` section of the config (YAML diff over the defaults), then from
the flags. Output is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import sys

from hvdistill.config import ConfigError, SynthConfig, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--format", choices=["nuscenes", "semantickitti"], default="nuscenes")
    p.add_argument("--out", help="output directory (the dataset root)")
    p.add_argument("--config", help="YAML config diff; its `synth` section is used")
    p.add_argument("--scenes", type=int, help="nuScenes scenes (default: synth.scenes)")
    p.add_argument("--frames-per-scene", type=int, help="keyframes per scene / sequence")
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int, help="image width (default: synth.image_width)")
    p.add_argument("--height", type=int, help="image height (default: synth.image_height)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes table folder name")
    p.add_argument("--sequences", nargs="+", default=None, help="SemanticKITTI sequences (default 00 08)")
    p.add_argument(
        "--side-outputs",
        action="store_true",
        help="also write per-pixel class and depth maps under DIR/side_outputs/",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> SynthConfig:
    """The synth config: defaults <- --config YAML <- flags."""
    cfg = load_config(args.config).synth if args.config else SynthConfig()
    for flag, key in (
        ("scenes", "scenes"),
        ("frames_per_scene", "frames_per_scene"),
        ("seed", "seed"),
        ("width", "image_width"),
        ("height", "image_height"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, key, value)
    problems = [
        f"--{k.replace('_', '-')} must be >= 1" for k in ("scenes", "frames_per_scene") if getattr(cfg, k) < 1
    ]
    if cfg.image_width < 16 or cfg.image_height < 16:
        problems.append("--width/--height must be at least 16 pixels")
    if problems:
        raise ConfigError(problems)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "docs":
        from hvdistill.synthetic.pictures import main as docs_main  # noqa: PLC0415

        return docs_main(argv[1:])
    args = _parser().parse_args(argv)
    if not args.out:
        print("hvdistill synth: --out DIR is required (the dataset root to write)", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args)
    except ConfigError as err:
        print(f"hvdistill synth: {err}", file=sys.stderr)
        return 2
    from hvdistill.synthetic import write_nuscenes, write_semantickitti  # noqa: PLC0415

    progress = not args.no_progress
    if args.format == "nuscenes":
        root = write_nuscenes(args.out, cfg, args.version, side_outputs=args.side_outputs, progress=progress)
    else:
        root = write_semantickitti(
            args.out, cfg, args.sequences, side_outputs=args.side_outputs, progress=progress
        )
    print(f"wrote {args.format} to {root}")
    return 0
