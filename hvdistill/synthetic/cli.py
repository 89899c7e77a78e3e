"""`hvdistill synth`: generate the synthetic world in the nuScenes, SemanticKITTI or Argoverse 2 layout.

    hvdistill synth --out DIR [--format nuscenes] [--version v1.0-trainval] [--config YAML]
                    [--side-outputs] [--no-progress] [synth.KEY=VALUE ...]
    hvdistill synth --out DIR --format semantickitti synth.kitti_sequences=[00,08] synth.frames_per_scene=4
    hvdistill synth --out DIR --format argoverse2 synth.argoverse2.logs=1 synth.argoverse2.image_scale=0.25

What the world holds comes from the `synth` section of the config (defaults <- --config YAML
<- `key=value` overrides such as `synth.scenes=2 synth.seed=0 synth.image_width=800`); only
that section is validated. The flags are not config values: --out, --format and --version say
where and in which layout (and nuScenes table folder) the same world is written, --side-outputs
adds debugging maps beside it, --config and --no-progress steer the command. Output is
deterministic for a seed. Everything is checked before anything is written: the config, and
--out (a file, or a file among its parents, is refused with exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hvdistill.config import RUN_SECTIONS, ConfigError, SynthConfig, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--format", choices=["nuscenes", "semantickitti", "argoverse2"], default="nuscenes")
    p.add_argument("--out", help="output directory (the dataset root)")
    p.add_argument("--config", help="YAML config diff; its `synth` section is used")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes table folder name")
    p.add_argument(
        "--side-outputs",
        action="store_true",
        help="also write per-pixel class and depth maps under DIR/side_outputs/",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", help="synth.KEY=VALUE config overrides, applied in order")
    return p


def resolve_config(args: argparse.Namespace) -> SynthConfig:
    """The synth config: defaults <- --config YAML <- overrides; only `synth` is validated."""
    return load_config(args.config, list(args.overrides), sections=RUN_SECTIONS["synth"]).synth


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if not args.out:
        print("hvdistill synth: --out DIR is required (the dataset root to write)", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args)
    except ConfigError as err:
        print(f"hvdistill synth: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    blocked = next((d for d in [out, *out.parents] if d.exists() and not d.is_dir()), None)
    if blocked is not None:
        print(
            f"hvdistill synth: --out: {blocked} is a file, not a directory; give another --out",
            file=sys.stderr,
        )
        return 2
    from hvdistill.synthetic import write_argoverse2, write_nuscenes, write_semantickitti  # noqa: PLC0415

    progress = not args.no_progress
    if args.format == "nuscenes":
        root = write_nuscenes(args.out, cfg, args.version, side_outputs=args.side_outputs, progress=progress)
    elif args.format == "argoverse2":
        root = write_argoverse2(args.out, cfg, side_outputs=args.side_outputs, progress=progress)
    else:
        root = write_semantickitti(
            args.out, cfg, cfg.kitti_sequences, side_outputs=args.side_outputs, progress=progress
        )
    print(f"wrote {args.format} to {root}")
    return 0
