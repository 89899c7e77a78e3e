"""The `optim` section: the published schedule by default, the large-batch rule's values and their checks,
and the shipped 32-GPU config (4 nodes x 8 GPUs, global batch 128) that the rule scales up."""

from __future__ import annotations

import pytest

from hvdistill.config import ConfigError, load_config
from hvdistill.train.engine import deepspeed_config
from hvdistill.train.schedule import choose_large_batch, resolved_schedule
from tests.helpers import config_path


def test_defaults_are_the_published_schedule_and_the_rule_above_scale_2():
    o = load_config(None, [], sections=["optim"]).optim
    assert (o.lr, o.reference_batch, o.warmup_steps, o.warmup_fraction, o.grad_clip) == (0.5, 16, 0, 0.0, 0.0)
    assert (o.large_batch_above_scale, o.large_batch_warmup_fraction, o.large_batch_grad_clip) == (
        2.0,
        0.1,
        5.0,
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optim.warmup_fraction=1.0"], "optim.warmup_fraction"),
        (["optim.warmup_fraction=-0.1"], "optim.warmup_fraction"),
        (["optim.large_batch_warmup_fraction=1.5"], "optim.large_batch_warmup_fraction"),
        (["optim.warmup_steps=100", "optim.warmup_fraction=0.1"], "both set"),
        (["optim.large_batch_above_scale=-1"], "optim.large_batch_above_scale"),
        (["optim.large_batch_grad_clip=-1"], "optim.large_batch_grad_clip"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides, sections=["optim"])


def test_the_32_gpu_config_validates_and_scales_the_paper_recipe_up():
    cfg = load_config(config_path("cluster-32gpu.yaml"))
    assert cfg.dist.num_workers == 32 and cfg.train.global_batch == 128 and cfg.dist.use_gpu
    assert cfg.dist.storage_path.startswith("s3://") and cfg.data.shards[0].startswith("s3://")
    ds = deepspeed_config(resolved_schedule(cfg), 32)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 1)
    choice = choose_large_batch(cfg.optim, cfg.train.global_batch)
    assert choice.peak == 4.0 and choice.large  # the paper's 0.5 x 128 / 16
    assert ds["gradient_clipping"] == cfg.optim.large_batch_grad_clip
    assert choice.optim.warmup_fraction == cfg.optim.large_batch_warmup_fraction
    paper = load_config(config_path("paper.yaml"))
    assert (cfg.optim, cfg.loss, cfg.model.lidar) == (paper.optim, paper.loss, paper.model.lidar)
