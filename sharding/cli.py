"""`hvdistill shard` (every configured dataset into WebDataset shards, with Ray) and `shard verify DIR`.

    hvdistill shard --out shards/ [--config YAML] [--ray-address ADDR] [--workers N] [--no-progress]
                    [key=value ...]
    hvdistill shard --out shards/ data.sources.0.root=data/nuscenes data.sources.0.version=v1.0-trainval
    hvdistill shard --out s3://bucket/prefix --config YAML
    hvdistill shard verify shards/          (or s3://bucket/prefix)

Every entry of `data.sources` (name, root, version, split, split_file) is sharded into the one
output directory, in order, so a multi-dataset config shards in one command; `data.shard_size_mb`,
`data.max_bad_fraction` and the rest of the `data` section are ordinary overrides, and only that
section is validated. The flags are not config values: --out is this command's output,
--ray-address, --workers and --no-progress say where and how it runs. Without --ray-address a
local Ray is started on 127.0.0.1 with --workers CPUs and shut down at the end. Re-running the
same command after a crash finishes only what is missing.

--out is a local directory or an object-store prefix (s3://bucket/prefix, gs://...) with the same
layout; credentials and the endpoint come from the environment of the driver and of every Ray
worker (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), never from the command.
An --out the storage layer refuses, or one naming an existing file, is one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from hvdistill.config import RUN_SECTIONS, Config, ConfigError, SourceConfig, load_config
from hvdistill.storage import Location, StorageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdistill shard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", required=True, help="output directory or s3://bucket/prefix (shared by all sources)"
    )
    p.add_argument("--config", default=None, help="YAML diff over the default config")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster; default: local")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="concurrent tasks; CPUs of the local Ray cluster (default: all cores; "
        "with --ray-address: one task per cluster CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides, e.g. data.shard_size_mb=64")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[list[SourceConfig], Config]:
    """Defaults <- YAML <- overrides; the `data` section validated; sources with absolute roots."""
    problems: list[str] = []
    try:
        cfg = load_config(args.config, list(args.overrides), sections=RUN_SECTIONS["shard"])
    except ConfigError as exc:
        problems, cfg = exc.problems, None
    if args.workers is not None and args.workers <= 0:
        problems.append("--workers: must be >= 1")
    if cfg is not None and not cfg.data.sources:
        problems.append("data.sources: empty; list the datasets to shard (name, root, version, split)")
    if problems:
        raise ConfigError(problems)
    sources = [replace(s, root=str(Path(s.root).resolve())) for s in cfg.data.sources]
    return sources, cfg


def output_location(text: str) -> Location:
    """--out as a Location (a local path made absolute); ValueError with one line if unusable."""
    try:
        out = Location(text)
        out = out if out.remote else Location(out.local.resolve())
        if out.is_file():
            raise ValueError(f"--out: {out} is a file; give a directory or an s3://bucket/prefix")
    except StorageError as exc:
        raise ValueError(f"--out: {exc}") from None
    return out


def _shard_all(sources: list[SourceConfig], cfg: Config, out: Location, args: argparse.Namespace) -> int:
    """Run the job once per source; stop at the first failure (a re-run resumes)."""
    from sharding.job import ShardingError, run_sharding
    from sharding.manifest import MANIFEST

    for i, source in enumerate(sources):
        what = f"data.sources.{i} ({source.name} {source.split} at {source.root})"
        try:
            result = run_sharding(
                source, cfg.data, out, progress=not args.no_progress, max_in_flight=args.workers or 0
            )
        except ShardingError as exc:
            print(f"hvdistill shard: {what}: FAILED\n{exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"hvdistill shard: {what}: {exc}", file=sys.stderr)
            return 2
        except StorageError as exc:  # no such bucket, no credentials, no endpoint: a re-run resumes
            print(f"hvdistill shard: {what}: {exc}", file=sys.stderr)
            return 2
        m = result.manifest
        print(
            f"hvdistill shard: {what} -> {out / MANIFEST}: {m['samples']} samples in "
            f"{len(m['shards'])} shards, {len(m['skipped'])} skipped "
            f"({result.converted_units} units converted, {result.skipped_units} already done)"
        )
    return 0


def shard(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        sources, cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"hvdistill shard: {exc}", file=sys.stderr)
        return 2
    try:
        out = output_location(args.out)
    except ValueError as exc:
        print(f"hvdistill shard: {exc}", file=sys.stderr)
        return 2
    import ray

    from sharding.job import init_ray

    started = init_ray(args.ray_address, args.workers or os.cpu_count() or 1)
    try:
        return _shard_all(sources, cfg, out, args)
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        from sharding.verify import main as verify_main

        return verify_main(argv[1:])
    return shard(argv)


if __name__ == "__main__":
    sys.exit(main())
