"""Comparing a state dict with a module's own keys: what is missing, unexpected or mis-shaped.

Shared by the strict loaders (teacher checkpoints in `image/weights.py`, the exported 3D
backbone in `lidar/student.py`) so every refusal reads the same: each kind of problem with its
count and the first `LISTED_KEYS` keys, e.g.
`2 missing (layer3.1.conv2.weight, layer4.0.bn1.running_var); 1 unexpected (layer9.weight)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

LISTED_KEYS = 10  # keys named per kind of problem in an error message; the rest are counted


def key_problems(
    own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], tolerated: Iterable[str] = ()
) -> dict[str, list[str]]:
    """{"missing", "unexpected", "mismatched"} key lists of `given` against `own`, sorted.

    A key ending in one of the `tolerated` suffixes (e.g. "num_batches_tracked") is never missing.
    """
    suffixes = tuple(tolerated)
    missing = [k for k in own if k not in given and not (suffixes and k.endswith(suffixes))]
    unexpected = [k for k in given if k not in own]
    mismatched = [
        f"{k}: given {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    return {"missing": sorted(missing), "unexpected": sorted(unexpected), "mismatched": sorted(mismatched)}


def listing(keys: list[str], limit: int = LISTED_KEYS) -> str:
    """`a, b, c` or `a, b, ... and 7 more`."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... and {len(keys) - limit} more"


def describe(problems: Mapping[str, list[str]], limit: int = LISTED_KEYS) -> str:
    """One line: every non-empty kind with its count and its first `limit` keys."""
    parts = [f"{len(keys)} {kind} ({listing(keys, limit)})" for kind, keys in problems.items() if keys]
    return "; ".join(parts) if parts else "no problems"
