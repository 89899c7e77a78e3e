"""`hvdistill config show CONFIG [key=value ...]`: print the resolved, validated config as YAML.

A hardware-dependent value is printed as written (`precision.image_dtype: auto`), followed by a
comment line with what it resolves to on this machine (see hvdistill/precision.py).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from hvdistill.config import Config, ConfigError, flatten, load_config, to_dict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvdistill config", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print the resolved config")
    show.add_argument("config", nargs="?", default=None, help="YAML diff over the defaults")
    show.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied in order")
    show.add_argument("--flat", action="store_true", help="print flat key = value lines")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        print(f"hvdistill config: {exc}", file=sys.stderr)
        return 2
    if args.flat:
        for key, value in flatten(cfg).items():
            print(f"{key} = {value!r}")
    else:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    if cfg.precision.image_dtype == "auto":
        print(f"# {_auto_precision_here(cfg)}")
    return 0


def _auto_precision_here(cfg: Config) -> str:
    """`precision.image_dtype: auto -> bfloat16 (...) on this machine's cpu` (imports torch)."""
    import torch

    from hvdistill.precision import choose_image_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    choice = choose_image_dtype(cfg.precision, device)
    return f"{choice.describe('auto')} on this machine's {device}"
