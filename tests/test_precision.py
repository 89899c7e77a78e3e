"""precision.image_dtype: `auto` picks bf16 only where the device runs it natively; explicit wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hvdistill.config import Config, ModelConfig, PrecisionConfig
from hvdistill.models.image.teacher import build_image_teacher
from hvdistill.precision import (
    choose_image_dtype,
    cpu_bf16_features,
    resolve_image_dtype,
    resolved_precision,
)

AUTO = PrecisionConfig()  # the default


def _never():
    raise AssertionError("this probe must not run")


def _cpu(features):
    return {"cpu_features": lambda: features, "cuda_native": _never, "capability": lambda: "AVX512"}


def test_auto_is_the_default():
    assert AUTO.image_dtype == "auto" and Config().precision.image_dtype == "auto"


@pytest.mark.parametrize("features", [["avx512_bf16"], ["amx_tile"], ["amx_tile", "avx512_bf16"]])
def test_auto_picks_bf16_on_a_cpu_with_native_bf16(features):
    choice = choose_image_dtype(AUTO, "cpu", **_cpu(features))
    assert choice.dtype == torch.bfloat16 and features[-1] in choice.reason


def test_auto_picks_fp32_on_an_avx2_only_cpu():
    probes = {"cpu_features": lambda: [], "cuda_native": _never, "capability": lambda: "AVX2"}
    choice = choose_image_dtype(AUTO, "cpu", **probes)
    assert choice.dtype == torch.float32 and "AVX2" in choice.reason
    assert choice.describe("auto").startswith("precision.image_dtype: auto -> float32 (auto: cpu AVX2")


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_value_wins_without_probing(name, device):
    choice = choose_image_dtype(
        PrecisionConfig(image_dtype=name), device, cpu_features=_never, cuda_native=_never, capability=_never
    )
    assert choice.name == name and choice.reason == "explicit"


def test_cuda_follows_the_device_bf16_support():
    on = choose_image_dtype(AUTO, "cuda:0", cpu_features=_never, cuda_native=lambda: True)
    off = choose_image_dtype(AUTO, torch.device("cuda"), cpu_features=_never, cuda_native=lambda: False)
    assert on.dtype == torch.bfloat16 and "cuda" in on.reason
    assert off.dtype == torch.float32 and "without native bf16" in off.reason


def test_other_devices_stay_fp32():
    assert choose_image_dtype(AUTO, "meta", cpu_features=_never, cuda_native=_never).name == "float32"


def test_the_real_cpu_probe_agrees_with_the_cpu_flags():
    features = cpu_bf16_features()
    assert set(features) <= {"amx_tile", "avx512_bf16"}
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    assert ("avx512_bf16" in features) == ("avx512_bf16" in flags)
    assert ("amx_tile" in features) == ("amx_tile" in flags)


def test_resolution_is_logged_once_and_recorded_in_the_resolved_config(caplog, monkeypatch):
    import hvdistill.precision

    monkeypatch.setattr(hvdistill.precision, "_LOGGED", set())  # as in a fresh process
    cfg = Config()
    with caplog.at_level(logging.INFO, logger="hvdistill.precision"):
        first = resolve_image_dtype(cfg.precision, "cpu")
        again = resolve_image_dtype(cfg.precision, "cpu")
    assert first == again == choose_image_dtype(cfg.precision, "cpu").dtype
    lines = [r.getMessage() for r in caplog.records if "precision.image_dtype" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("precision.image_dtype: auto -> ")
    resolved = resolved_precision(cfg, "cpu")
    assert resolved.precision.image_dtype in ("bfloat16", "float32")
    assert resolved.precision.image_dtype == choose_image_dtype(cfg.precision, "cpu").name
    assert cfg.precision.image_dtype == "auto"  # the run's config itself is untouched


def test_the_teacher_computes_in_the_resolved_dtype():
    model = ModelConfig()
    model.image.arch, model.image.random_init = "resnet18", True
    explicit = build_image_teacher(model, PrecisionConfig(image_dtype="float32"), "cpu")
    auto = build_image_teacher(model, AUTO, "cpu")
    assert explicit.compute_dtype == torch.float32
    assert auto.compute_dtype == choose_image_dtype(AUTO, "cpu").dtype
