"""The share of each dataset in the training samples, per logging interval (docs/mixing.md).

The train reader counts the samples it yields per dataset in shared memory, summed over its
DataLoader workers (`ShardDataset.delivered()`). `DatasetShares.window()` is this rank's count
per dataset since the previous call; the loop's `Meter` sends it in the collective it runs once
per logging interval anyway, and `metrics(summed)` turns the counts summed over ranks into
`data/share/<dataset>`: that dataset's fraction of all samples delivered in the interval (every
rank's, not cumulative). A sample naming a dataset the manifests do not (a damaged shard) counts
in the total and in no dataset, so the shares then sum to less than 1.

The counts are taken where the workers produce samples, so an interval runs ahead of the batches
trained on by the DataLoader's prefetch (`data.prefetch_factor` x `data.loader_workers`
micro-batches at most): that shifts the window, not what the shares measure.

`configured()` is what the run asked for: each dataset's weight over the weights of the datasets
read, logged once by rank 0 as the params `data/share/<dataset>` beside the metrics of that name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from hvdistill.data.shard_mix import shares


class Reader(Protocol):
    """What the counts come from (hvdistill/data/shards.py's ShardDataset)."""

    datasets: tuple[str, ...]
    weights: dict[str, float]

    def delivered(self) -> torch.Tensor: ...


class DatasetShares:
    """Per-interval counts of the samples a reader delivered per dataset (module docstring)."""

    def __init__(self, reader: Reader):
        self.reader, self.datasets = reader, tuple(reader.datasets)
        self._last = reader.delivered().clone()  # (D + 1,) int64: per dataset, then "other"

    def window(self) -> torch.Tensor:
        """(D + 1,) float64: samples delivered since the previous call, per dataset, then other."""
        now = self.reader.delivered().clone()
        counts, self._last = now - self._last, now
        return counts.double()

    def metrics(self, summed: Sequence[float]) -> dict[str, float]:
        """`data/share/<dataset>` of counts (D + 1,) summed over ranks; {} for an empty interval."""
        total = float(sum(summed))
        if total <= 0:
            return {}
        return {f"data/share/{d}": float(c) / total for d, c in zip(self.datasets, summed)}

    def configured(self) -> dict[str, float]:
        """`data/share/<dataset>`: the share each dataset's weight asks for."""
        return {f"data/share/{d}": s for d, s in shares(self.reader.weights).items()}
