"""Which dtype the dense image side computes in: `precision.image_dtype`, with `auto` chosen by the hardware.

`auto` (the default) picks bfloat16 where the device runs it natively and float32 elsewhere:
a CUDA device that reports bf16 support (`torch.cuda.is_bf16_supported()`), or a CPU with
AVX512-BF16 or AMX tiles (`torch.cpu._is_avx512_bf16_supported()` / `_is_amx_tile_supported()`).
Without them CPU bf16 autocast is emulated and far slower than fp32 (31x for a 64-channel 3x3
convolution on an AVX2-only CPU, docs/benchmarks.md), so `auto` never picks it there. An
explicit `bfloat16`, `float16` or `float32` is used as given.

The choice is logged once per (setting, device type) at INFO, with its reason, and a run
records the resolved value: `resolved_precision(cfg, device)` returns the config with the
concrete dtype in `precision.image_dtype`, the copy a run's resolved config and parameters carry.
The hardware probes are passed in (`cpu_bf16_features()`, `cuda_bf16()` by default), so the
rule is testable on any machine.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from hvdistill.config import Config, PrecisionConfig

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class DtypeChoice(NamedTuple):
    name: str  # "bfloat16" | "float16" | "float32"
    reason: str  # e.g. "auto: cpu avx512_bf16" or "explicit"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def describe(self, setting: str) -> str:
        """`precision.image_dtype: auto -> bfloat16 (auto: cpu avx512_bf16)`."""
        return f"precision.image_dtype: {setting} -> {self.name} ({self.reason})"


def cpu_bf16_features() -> list[str]:
    """The native CPU bf16 features of this machine: any of "amx_tile", "avx512_bf16"."""
    features = []
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        features.append("amx_tile")
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        features.append("avx512_bf16")
    return features


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels were dispatched to (e.g. "AVX2", "AVX512")."""
    return torch.backends.cpu.get_cpu_capability()


def cuda_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (Ampere and newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def choose_image_dtype(
    precision: PrecisionConfig,
    device: torch.device | str,
    cpu_features: Callable[[], list[str]] = cpu_bf16_features,
    cuda_native: Callable[[], bool] = cuda_bf16,
    capability: Callable[[], str] = cpu_capability,
) -> DtypeChoice:
    """The dtype `precision.image_dtype` means on `device`, and why; probes only for `auto`."""
    if precision.image_dtype != "auto":
        return DtypeChoice(precision.image_dtype, "explicit")
    kind = torch.device(device).type
    if kind == "cuda":
        if cuda_native():
            return DtypeChoice("bfloat16", "auto: cuda device with native bf16")
        return DtypeChoice("float32", "auto: cuda device without native bf16")
    if kind == "cpu":
        features = cpu_features()
        if features:
            return DtypeChoice("bfloat16", f"auto: cpu {capability()} with {'+'.join(features)}")
        return DtypeChoice("float32", f"auto: cpu {capability()} without avx512_bf16 or amx_tile")
    return DtypeChoice("float32", f"auto: no native bf16 rule for device type {kind!r}")


_LOGGED: set[tuple[str, str]] = set()


def resolve_image_dtype(precision: PrecisionConfig, device: torch.device | str) -> torch.dtype:
    """The torch dtype of the dense image side on `device`; logs the choice once."""
    choice = choose_image_dtype(precision, device)
    key = (precision.image_dtype, torch.device(device).type)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info(choice.describe(precision.image_dtype))
    return choice.dtype


def resolved_precision(cfg: Config, device: torch.device | str) -> Config:
    """A copy of `cfg` with `precision.image_dtype` resolved to the dtype `device` will use."""
    out = copy.deepcopy(cfg)
    out.precision.image_dtype = choose_image_dtype(cfg.precision, device).name
    return out
