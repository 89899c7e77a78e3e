"""A verb module for the CLI boundary tests: `main(["<kind>"])` raises that kind of failure."""

from __future__ import annotations

import json


def main(argv: list[str] | None = None) -> int:
    kind = (argv or ["ok"])[0]
    if kind == "missing-file":
        open("/nonexistent-hvdistill-test/config.yaml")  # noqa: SIM115 - raises FileNotFoundError
    if kind == "library-value-error":
        json.loads("{")  # raised inside the json module: not a message written for users
    if kind == "key-error":
        return {}["missing"]
    if kind == "interrupt":
        raise KeyboardInterrupt
    return 0
