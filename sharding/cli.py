"""`hvdistill shard ...` (convert a dataset into WebDataset shards with Ray) and `shard verify DIR`.

    hvdistill shard --source nuscenes --root data/nuscenes --version v1.0-trainval --split train
                    --out shards/ [--ray-address ADDR] [--workers N] [--shard-size-mb 256]
                    [--max-bad-fraction 0.01] [--config YAML] [key=value ...]
    hvdistill shard verify shards/

Without --ray-address a local Ray is started on 127.0.0.1 with --workers CPUs and shut down
at the end. Re-running the same command after a crash finishes only what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, SourceConfig
from hvdistill.config import problems as problems_of
from hvdistill.config.loader import apply_overrides, load_yaml_diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill shard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", required=True, choices=["nuscenes", "semantickitti"])
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--version", default=None, help="nuScenes table version (e.g. v1.0-trainval)")
    p.add_argument("--split", required=True, choices=["train", "val"])
    p.add_argument("--split-file", default=None, help="file listing scenes/sequences to keep")
    p.add_argument("--out", required=True, help="output directory (shared by several sources)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster; default: local")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="concurrent tasks; CPUs of the local Ray cluster (default: all cores; "
        "with --ray-address: one task per cluster CPU)",
    )
    p.add_argument("--shard-size-mb", type=float, default=None)
    p.add_argument("--max-bad-fraction", type=float, default=None)
    p.add_argument("--config", default=None, help="YAML diff over the default config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[SourceConfig, Config]:
    """Defaults <- YAML <- overrides <- flags; only the data section is validated here."""
    cfg = Config()
    problems = load_yaml_diff(cfg, args.config) if args.config else []
    problems += apply_overrides(cfg, list(args.overrides))
    if args.shard_size_mb is not None:
        cfg.data.shard_size_mb = args.shard_size_mb
    if args.max_bad_fraction is not None:
        cfg.data.max_bad_fraction = args.max_bad_fraction
    problems += problems_of(cfg, RUN_SECTIONS["shard"])
    if args.workers is not None and args.workers <= 0:
        problems.append("--workers: must be >= 1")
    if problems:
        raise ConfigError(problems)
    base = next((s for s in cfg.data.sources if s.name == args.source), SourceConfig(name=args.source))
    source = replace(
        base,
        root=str(Path(args.root).resolve()),
        split=args.split,
        version=args.version or base.version,
        split_file=args.split_file if args.split_file is not None else base.split_file,
    )
    return source, cfg


def shard(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        source_cfg, cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"hvdistill shard: {exc}", file=sys.stderr)
        return 2
    import ray

    from sharding.job import ShardingError, init_ray, run_sharding

    started = init_ray(args.ray_address, args.workers or os.cpu_count() or 1)
    try:
        result = run_sharding(
            source_cfg,
            cfg.data,
            Path(args.out).resolve(),
            progress=not args.no_progress,
            max_in_flight=args.workers or 0,
        )
    except ShardingError as exc:
        print(f"hvdistill shard: FAILED\n{exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"hvdistill shard: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    m = result.manifest
    print(
        f"hvdistill shard: {args.out}/manifest.json: {m['samples']} samples in "
        f"{len(m['shards'])} shards, {len(m['skipped'])} skipped "
        f"({result.converted_units} units converted, {result.skipped_units} already done)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        from sharding.verify import main as verify_main

        return verify_main(argv[1:])
    return shard(argv)


if __name__ == "__main__":
    sys.exit(main())
