"""ZeRO-1/2 optimizer partitions saved by N ranks, cut again for another number of ranks (pure tensors).

DeepSpeed's ZeRO-1/2 optimizer keeps, per parameter group, one flat fp32 tensor of all the group's
parameters (in parameter order, zero-padded at the end to a multiple of the ranks) split into
equal contiguous partitions, one per rank; the base torch optimizer's state (SGD's
`momentum_buffer`, AdamW's `exp_avg` / `exp_avg_sq`) is a tensor of the same partition shape.
Each rank saves its own partition (its fp32 weights without padding under
`single_partition_of_fp32_groups`, its optimizer state with padding under
`base_optimizer_state`), and a resume at the same world size loads each rank's own entry:
exact, DeepSpeed's rigid path.

At another world size `repartition` rebuilds each group's unpadded flat tensors by concatenating
every saved rank's piece (its padding cut off), and cuts this rank's slice for the new layout:
`[rank * size, (rank + 1) * size)` of the flat tensor, `size` being the new partition size the live
engine reports, zero-padded where the flat tensor ends. The result is a rigid state DeepSpeed
loads as if this rank had saved it: the same numbers, placed for the new ranks. (DeepSpeed's own
`elastic_checkpoint` mode does this merge too, but its restore at an unchanged world size was
measured not to be bit-exact here, so the rigid format stays the saved one.)
"""

from __future__ import annotations

from typing import Any

import torch

BASE_OPTIMIZER_STATE = "base_optimizer_state"  # deepspeed.checkpoint.constants
FP32_PARTITIONS = "single_partition_of_fp32_groups"
GROUP_PADDINGS = "group_paddings"


def _flat(states: list[dict[str, Any]], group: int, key: str | None) -> torch.Tensor:
    """(elements of the group,) the saved pieces of every rank concatenated, padding cut off."""
    pieces = []
    for state in states:
        lean = state[FP32_PARTITIONS][group]  # (this rank's elements without padding,)
        pieces.append(
            lean if key is None else state[BASE_OPTIMIZER_STATE]["state"][group][key][: lean.numel()]
        )
    return torch.cat([p.reshape(-1) for p in pieces])


def _slice(flat: torch.Tensor, rank: int, size: int, pad: bool) -> torch.Tensor:
    """This rank's `size` elements of `flat` (fewer at its end unless `pad` fills them with zeros)."""
    part = flat[rank * size : min((rank + 1) * size, flat.numel())].clone()
    if pad and part.numel() < size:
        part = torch.cat([part, part.new_zeros(size - part.numel())])
    return part


def repartition(
    states: list[dict[str, Any]], rank: int, sizes: list[int], live: dict[str, Any]
) -> dict[str, Any]:
    """The rigid state of `rank` for partitions of `sizes` elements per group, from the states
    saved by `len(states)` ranks; `live` is the engine's own state dict (param groups, paddings,
    and every entry that is not per rank)."""
    first = states[0]
    base = first[BASE_OPTIMIZER_STATE]
    groups = len(first[FP32_PARTITIONS])
    state: dict[int, dict[str, Any]] = {}
    for g in range(groups):
        saved = base["state"].get(g, {})
        state[g] = {
            key: _slice(_flat(states, g, key), rank, sizes[g], pad=True)
            if isinstance(value, torch.Tensor) and value.dim() > 0
            else value  # a scalar (AdamW's step) is the same on every rank
            for key, value in saved.items()
        }
    fp32 = [_slice(_flat(states, g, None), rank, sizes[g], pad=False) for g in range(groups)]
    live_base = live.get(BASE_OPTIMIZER_STATE, {})
    return {
        **first,
        BASE_OPTIMIZER_STATE: {
            "state": state,
            "param_groups": live_base.get("param_groups", base["param_groups"]),
        },
        FP32_PARTITIONS: fp32,
        GROUP_PADDINGS: live.get(GROUP_PADDINGS, first.get(GROUP_PADDINGS)),
    }
