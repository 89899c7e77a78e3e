"""What goes into a tracking store without MLflow: run tags, param strings, the metric-name rule,
batches."""

from __future__ import annotations

import pytest
import torch

from hvdistill.tracking_values import check_metric_name, chunks, default_tags, param_value, truncated


def test_every_run_carries_its_hardware_and_software_tags():
    tags = default_tags(world_size=3)
    assert tags["world_size"] == "3"
    assert (tags["hardware.gpu"] == "none") == (not torch.cuda.is_available())
    assert {"host", "hardware.cpu", "hardware.cpu_count", "torch.version", "hvdistill.version"} <= set(tags)


def test_params_are_bounded_strings():
    assert param_value("a") == "a" and param_value(3) == "3"
    assert param_value({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    assert truncated("x" * 10, 20) == "x" * 10
    cut = truncated("x" * 100, 40)
    assert len(cut) == 40 and cut.endswith("...[truncated: 100 chars]")
    assert list(chunks(list(range(5)), 2)) == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("name", ["loss/total", "val/miou", "memory/peak_rss_mb", "a b:c.d-e"])
def test_metric_names_mlflow_accepts(name):
    check_metric_name(name, 250)


@pytest.mark.parametrize("name", ["../up", "/abs", "a//b", "a/./b", "bad|char", "x" * 251])
def test_metric_names_mlflow_refuses_are_refused_before_sending(name):
    with pytest.raises(ValueError, match="not valid in MLflow"):
        check_metric_name(name, 250)
