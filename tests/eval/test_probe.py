"""The frozen-feature probe: its converged logistic fit, class balancing, prototypes, BatchNorm
recalibration, its config checks, and a whole probe on the synthetic world's labelled shards."""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
import torch

from hvdistill.config import Config, ConfigError
from hvdistill.config.probe import probe_problems
from hvdistill.eval.metrics import METRIC_NAME_LIMIT
from hvdistill.eval.probe import frozen_probe
from hvdistill.eval.probe_features import recalibrate_batchnorm, sample_points
from hvdistill.eval.probe_fit import Standardiser, class_weights, fit_logistic, fit_prototypes
from hvdistill.eval.run import load_finetune_config
from hvdistill.eval.segmentation import build_segmentation_model
from hvdistill.eval.voxels import SegBatch
from hvdistill.tracking_values import check_metric_name
from tests.eval.helpers import export_backbone, tiny_config, trained_looking_student, voxel_batch
from tests.eval.test_finetune import FAST, RecordingTracker, val_points
from tests.helpers import config_path


def symmetric_optimum(l2: float) -> float:
    """The a > 0 solving sigmoid(-2a) = l2 a: the optimum W = [[-a, a]] of the two-point problem below."""
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 / (1 + math.exp(2 * mid)) > l2 * mid else (lo, mid)
    return (lo + hi) / 2


def test_lbfgs_reaches_the_known_optimum_and_says_it_converged():
    # x = +1 is class 2, x = -1 is class 1 (class 0 absent: no logit); by symmetry b1 = b2 and
    # W = [[-a, a]], the loss log(1 + e^(-2a)) + l2 a^2 is smallest where sigmoid(-2a) = l2 a
    x = torch.tensor([[1.0], [-1.0]] * 5)  # (10, 1)
    y = torch.tensor([2, 1] * 5)  # (10,)
    fit = fit_logistic(x, y, l2=0.01, max_iterations=200, tolerance=1e-7, history=10)
    a = symmetric_optimum(0.01)
    assert fit.converged and fit.gradient_max <= 1e-7 and 0 < fit.iterations < 200
    assert fit.classes.tolist() == [1, 2]
    assert fit.weight.flatten().tolist() == pytest.approx([-a, a], abs=1e-6)
    assert fit.bias[0].item() == pytest.approx(fit.bias[1].item(), abs=1e-9)
    assert fit.loss == pytest.approx(math.log1p(math.exp(-2 * a)) + 0.01 * a * a, abs=1e-12)
    assert torch.equal(fit.predict(x), y)


def separable_clusters(seed: int = 0, per_class: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """(150, 2) points in three well-separated clusters, labelled 1, 3, 4."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = torch.cat([c + 0.5 * torch.randn(per_class, 2, generator=gen) for c in centres])  # (150, 2)
    return x, torch.tensor([1, 3, 4]).repeat_interleave(per_class)


def test_separable_classes_fit_to_accuracy_one_and_a_short_fit_is_reported_unconverged():
    x, y = separable_clusters()
    z = Standardiser.fit(x)(x)
    fit = fit_logistic(z, y, l2=1e-3, max_iterations=500, tolerance=1e-6, history=20)
    assert fit.converged and (fit.predict(z) == y).all()
    short = fit_logistic(z, y, l2=1e-3, max_iterations=1, tolerance=1e-6, history=20)
    assert short.iterations == 1 and not short.converged and short.gradient_max > 1e-6
    assert short.facts()["converged"] is False and fit.facts()["classes"] == [1, 3, 4]


def test_class_weights_are_inverse_frequency_and_average_one_over_the_points():
    y = torch.tensor([1] * 6 + [2] * 3 + [5] * 1)
    classes = torch.tensor([1, 2, 5])
    w = class_weights(y, classes)
    assert w.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert float(w[torch.searchsorted(classes, y)].sum()) == pytest.approx(len(y))  # mean weight 1
    with pytest.raises(ValueError, match="no training point"):
        class_weights(y, torch.tensor([1, 2, 3]))


def test_class_balancing_makes_nine_copies_of_one_class_weigh_like_one():
    # class 1 = nine copies of S, class 2 = -S once: balanced, that is the mirror-symmetric problem,
    # so the boundary sits at 0 (equal biases); unweighted, class 1 would pull it towards class 2
    s = torch.tensor([[0.2], [0.7], [1.5], [-0.3]])  # (4, 1) overlapping classes
    x = torch.cat([s.repeat(9, 1), -s])  # (40, 1)
    y = torch.tensor([1] * 36 + [2] * 4)
    fit = fit_logistic(x, y, l2=1e-3, max_iterations=200, tolerance=1e-8, history=10)
    assert fit.converged
    assert fit.bias[0].item() == pytest.approx(fit.bias[1].item(), abs=1e-7)
    assert fit.weight[0, 0].item() == pytest.approx(-fit.weight[0, 1].item(), abs=1e-7)


def test_prototypes_classify_clustered_features_without_optimisation():
    gen = torch.Generator().manual_seed(1)
    directions = torch.eye(8)[:3] * 3  # (3, 8)
    x = torch.cat([d + 0.3 * torch.randn(40, 8, generator=gen) for d in directions])  # (120, 8)
    y = torch.tensor([2, 5, 7]).repeat_interleave(40)
    z = Standardiser.fit(x)(x)
    protos = fit_prototypes(z, y)
    assert protos.classes.tolist() == [2, 5, 7]
    assert torch.allclose(protos.vectors.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert (protos.predict(z) == y).all()
    assert set(protos.predict(torch.randn(50, 8, dtype=torch.float64)).tolist()) <= {2, 5, 7}


def test_standardiser_centres_and_scales_and_leaves_a_constant_channel_unscaled():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    st = Standardiser.fit(x)
    z = st(x)
    assert z.mean(0).tolist() == pytest.approx([0.0, 0.0]) and z[:, 0].std(
        unbiased=False
    ).item() == pytest.approx(1.0)
    assert st.std[1].item() == 1.0 and z[:, 1].abs().max().item() == 0.0


def voxel_only_batch(cfg, seed: int) -> SegBatch:
    """A SegBatch of two ground + wall clouds with its voxel fields only (no points)."""
    coords, feats, shape, size = voxel_batch(cfg, seed=seed, n=600)
    empty = torch.zeros(0, dtype=torch.int64)
    return SegBatch(
        voxel_coords=coords, voxel_features=feats, voxel_labels=torch.zeros(len(coords), dtype=torch.int64),
        point_to_voxel=empty, point_labels=empty, spatial_shape=shape, batch_size=size, point_scan=empty,
        point_distance=torch.zeros(0), point_in_view=torch.zeros(0, dtype=torch.bool),
        scan_has_view=torch.ones(size, dtype=torch.bool), keys=[f"s{seed}-{b}" for b in range(size)],
    )  # fmt: skip


def batchnorm_inputs(model, batch: SegBatch) -> list[torch.Tensor]:
    """The (V_l, C_l) input of every BatchNorm of the backbone (module order) in a train-mode forward."""
    seen: dict[torch.nn.Module, torch.Tensor] = {}
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d)]

    def capture(module, inputs, _output) -> None:  # returns None: the output stays the module's
        seen.setdefault(module, inputs[0].clone())

    hooks = [m.register_forward_hook(capture) for m in norms]
    model.backbone.train()
    with torch.no_grad():
        model.features(batch.voxel_coords, batch.voxel_features, batch.spatial_shape, batch.batch_size)
    for h in hooks:
        h.remove()
    return [seen[m] for m in norms]


def test_batchnorm_recalibration_sets_running_stats_to_the_training_batch_statistics():
    cfg = tiny_config()
    model = build_segmentation_model(cfg.model.lidar, 17)
    model.backbone.load_state_dict(trained_looking_student(cfg).backbone_state_dict())
    reference = copy.deepcopy(model)  # train-mode BN inputs depend on the weights only
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    momenta = [m.momentum for m in norms]
    b1, b2 = voxel_only_batch(cfg, 0), voxel_only_batch(cfg, 1)

    def forward(b):
        return model.features(b.voxel_coords, b.voxel_features, b.spatial_shape, b.batch_size)

    assert recalibrate_batchnorm(model.backbone, forward, [b1]) == 1
    inputs = batchnorm_inputs(reference, b1)
    assert len(inputs) == len(norms) > 10 and not model.backbone.training
    for m, x in zip(norms, inputs):
        assert torch.allclose(m.running_mean, x.mean(0), atol=1e-5)
        assert torch.allclose(m.running_var, x.var(0, unbiased=True), rtol=1e-4, atol=1e-5)
        assert int(m.num_batches_tracked) == 1
    assert [m.momentum for m in norms] == momenta  # restored
    # two batches: the cumulative average of the two batches' statistics (momentum None)
    recalibrate_batchnorm(model.backbone, forward, [b1, b2])
    second = batchnorm_inputs(reference, b2)
    for m, x1, x2 in zip(norms, inputs, second):
        assert torch.allclose(m.running_mean, (x1.mean(0) + x2.mean(0)) / 2, atol=1e-5)


def test_points_are_sampled_per_scan_from_labelled_points_with_a_voxel_whatever_the_batching():
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 2, 0, 4, 4])
    p2v = torch.tensor([0, 1, -1, 2, 3, 4, 5, 6, 7, 7])
    scan = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    empty = torch.zeros(0)
    batch = SegBatch(
        voxel_coords=torch.zeros((8, 4), dtype=torch.int32), voxel_features=torch.zeros((8, 1)),
        voxel_labels=torch.zeros(8, dtype=torch.int64), point_to_voxel=p2v, point_labels=labels,
        spatial_shape=[1, 1, 1], batch_size=2, point_scan=scan, point_distance=empty,
        point_in_view=torch.zeros(10, dtype=torch.bool), scan_has_view=torch.ones(2, dtype=torch.bool),
        keys=["a", "b"],
    )  # fmt: skip
    assert sample_points(batch, 10, 0, 0).tolist() == [1, 3, 4, 5, 6, 8, 9]  # no ignore, no outside
    two = sample_points(batch, 2, 0, 0)
    assert len(two) == 4 and set(two[:2].tolist()) <= {1, 3, 4} and set(two[2:].tolist()) <= {5, 6, 8, 9}
    assert torch.equal(two, sample_points(batch, 2, 0, 0)) and not torch.equal(
        two, sample_points(batch, 2, 5, 0)
    )


def test_probe_config_problems_are_listed_with_their_fix():
    cfg = Config()
    assert probe_problems(cfg) == []
    cfg.probe.points_per_scan, cfg.probe.l2, cfg.probe.tolerance = 0, -1.0, 0.0
    cfg.probe.max_iterations, cfg.probe.history, cfg.probe.batch_size = 0, 0, -1
    problems = probe_problems(cfg)
    for key in ("points_per_scan", "l2", "tolerance", "max_iterations", "history", "batch_size"):
        assert any(p.startswith(f"probe.{key}: ") for p in problems), key
    with pytest.raises(ConfigError, match="probe.l2"):
        load_finetune_config(None, ["data.shards=[x]", "probe.l2=-1"])


@pytest.mark.slow  # two backbone passes over 9 scans on the CPU: ~20 s, then the cached re-run
def test_frozen_probe_scores_both_readouts_with_strata_and_reuses_its_cache(labelled_shards, tmp_path):
    cfg = load_finetune_config(config_path("tiny.yaml"), [f"data.shards=[{labelled_shards}]", *FAST])
    export_backbone(trained_looking_student(cfg), cfg, tmp_path / "pretrain")
    cfg.finetune.backbone, cfg.probe.points_per_scan = str(tmp_path / "pretrain"), 500
    tracker, run = RecordingTracker(), tmp_path / "probe"
    started = time.perf_counter()
    result = frozen_probe(cfg, run, tracker)
    print(f"frozen_probe on the test shards: {time.perf_counter() - started:.2f} s {result.metrics['probe']}")
    m, probe = result.metrics, result.metrics["probe"]
    assert probe["converged"] and probe["iterations"] == result.steps > 0 and not probe["cache_reused"]
    assert probe["train_points"] == len(np.load(run / "probe_cache" / "train_labels.npy"))
    assert 0 < probe["train_points"] <= 6 * 500 and m["train_scans"] == 6
    total, labelled, outside = val_points(labelled_shards, "nuscenes", cfg.finetune.point_range)
    assert (m["points_total"], m["points"], m["points_outside_range"]) == (total, labelled, outside)
    for readout in ("logistic", "prototype"):
        saved = json.loads((run / readout / "metrics.json").read_text())
        assert saved["readout"] == readout and {"in_view", "out_view"} <= set(saved["strata"])
        assert (run / readout / "confusion_per_scan.npy").is_file()
        assert saved["miou"] == pytest.approx(m["readouts"][readout]["miou"])
    assert result.miou == m["readouts"]["logistic"]["miou"] and np.isfinite(result.miou)
    logged = tracker.metrics[-1][1]
    assert {"val/miou", "val/miou_in_view", "val_prototype/miou", "probe/converged"} <= set(logged)
    for name in m["tracked"]:
        check_metric_name(name, METRIC_NAME_LIMIT)
    again = frozen_probe(cfg, run)  # the same directory: the features come from the cache
    assert again.metrics["probe"]["cache_reused"] and "recalibrate" not in again.metrics["probe"]["seconds"]
    assert again.miou == result.miou
    assert again.metrics["readouts"]["prototype"]["miou"] == m["readouts"]["prototype"]["miou"]
