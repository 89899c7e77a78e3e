"""The segmentation model loads an exported backbone exactly, refuses other layouts, and probes linearly."""

from __future__ import annotations

import json

import pytest
import torch

from hvdistill.eval.backbone import load_backbone
from hvdistill.eval.segmentation import build_segmentation_model
from tests.eval.helpers import export_backbone, tiny_config, trained_looking_student, voxel_batch

NUM_CLASSES = 17


def load(model, spec, cfg, **kw):
    return load_backbone(model, spec, cfg.geometry.voxel_size, cfg.model.lidar, **kw)


def test_loaded_backbone_reproduces_the_students_features_exactly(tmp_path):
    cfg = tiny_config()
    student = trained_looking_student(cfg)
    run = export_backbone(student, cfg, tmp_path / "run")
    coords, feats, shape, batch = voxel_batch(cfg)
    with torch.no_grad():
        expected = student(coords, feats, shape, batch).voxel_features  # (V, 96)
    for via, spec in (("run_dir", str(run)), ("file", str(run / "backbone.pt"))):
        model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES).eval()
        report = load(model, spec, cfg)
        assert report.source == via and report.loaded == len(student.backbone.state_dict())
        assert not report.missing and not report.unexpected and len(report.sha256) == 64
        assert report.meta["step"] == 7
        with torch.no_grad():
            assert torch.equal(model.features(coords, feats, shape, batch), expected)
    with torch.no_grad():
        assert model(coords, feats, shape, batch).shape == (len(coords), NUM_CLASSES)
    random_init = build_segmentation_model(cfg.model.lidar, NUM_CLASSES).eval()
    assert load(random_init, "", cfg).source == "random"
    with torch.no_grad():
        assert not torch.equal(random_init.features(coords, feats, shape, batch), expected)


def test_a_backbone_json_with_another_layout_is_refused_with_the_matching_overrides(tmp_path):
    cfg = tiny_config()
    run = export_backbone(trained_looking_student(cfg), cfg, tmp_path / "run")
    other = tiny_config(
        "model.lidar.planes=[8,16,16,16,16,16,16,12]",
        "geometry.voxel_size=0.2",
        "model.lidar.bev_head_stride=2",
    )
    model = build_segmentation_model(other.model.lidar, NUM_CLASSES)
    with pytest.raises(ValueError) as err:
        load(model, str(run), other)
    text = str(err.value)
    assert "set model.lidar.planes=[8,16,16,16,16,16,16,16]" in text
    assert "set geometry.voxel_size=0.1" in text


def test_a_two_conv_stem_is_refused_and_a_json_without_stem_convs_reads_as_two(tmp_path):
    cfg = tiny_config("model.lidar.stem_convs=2")
    run = export_backbone(trained_looking_student(cfg), cfg, tmp_path / "run")
    one_conv = tiny_config()  # the MinkUNet34C default
    with pytest.raises(ValueError, match=r"set model\.lidar\.stem_convs=2"):
        load(build_segmentation_model(one_conv.model.lidar, NUM_CLASSES), str(run), one_conv)
    meta = json.loads((run / "backbone.json").read_text())
    del meta["model"]["lidar"]["stem_convs"]  # written before the key existed: a two-conv stem
    (run / "backbone.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"set model\.lidar\.stem_convs=2"):
        load(build_segmentation_model(one_conv.model.lidar, NUM_CLASSES), str(run), one_conv)
    load(build_segmentation_model(cfg.model.lidar, NUM_CLASSES), str(run), cfg)  # its own layout loads


def test_shape_mismatch_without_metadata_is_refused(tmp_path):
    cfg = tiny_config()
    run = export_backbone(trained_looking_student(cfg), cfg, tmp_path / "run", meta=False)
    other = tiny_config("model.lidar.planes=[8,16,16,16,16,16,16,12]")
    model = build_segmentation_model(other.model.lidar, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"mismatched \(.*given .* vs model"):
        load(model, str(run), other, strict=False)


def test_missing_and_unexpected_keys_refused_when_strict_reported_when_not(tmp_path):
    cfg = tiny_config()
    student = trained_looking_student(cfg)
    state = student.backbone_state_dict()
    dropped = sorted(k for k in state if not k.endswith("num_batches_tracked"))[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "backbone.pt")
    model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES)
    with pytest.raises(ValueError, match=rf"1 missing \({dropped}\); 1 unexpected \(extra.weight\)"):
        load(model, str(tmp_path / "backbone.pt"), cfg)
    report = load(model, str(tmp_path / "backbone.pt"), cfg, strict=False)
    assert report.missing == [dropped] and report.unexpected == ["extra.weight"]
    assert report.loaded == len(state) - 1


def test_files_that_are_not_tensor_state_dicts_are_refused(tmp_path):
    cfg = tiny_config()
    model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a {name: tensor} state dict"):
        load(model, str(tmp_path / "list.pt"), cfg)
    torch.save({"w": torch.nn.Linear(1, 1)}, tmp_path / "module.pt")  # needs unpickling a class
    with pytest.raises(ValueError, match="not a weights-only tensor state dict"):
        load(model, str(tmp_path / "module.pt"), cfg)
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="has no backbone.pt"):
        load(model, str(tmp_path / "run"), cfg)
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        load(model, str(tmp_path / "nothing-here"), cfg)
    (tmp_path / "backbone.json").write_text(json.dumps([1]))
    torch.save({}, tmp_path / "backbone.pt")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load(model, str(tmp_path / "backbone.pt"), cfg)


def test_an_mlflow_run_id_needs_the_store(tmp_path):
    cfg = tiny_config()
    model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES)
    with pytest.raises(ValueError, match="set tracking.uri"):
        load(model, "runs:/0123456789abcdef0123456789abcdef", cfg, download_dir=tmp_path)


def test_linear_probe_trains_only_the_classifier_and_keeps_bn_statistics():
    cfg = tiny_config()
    model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES)
    model.backbone.load_state_dict(trained_looking_student(cfg).backbone_state_dict())
    model.freeze_backbone()
    model.train()
    assert not model.backbone.training and model.classifier.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.classifier.weight.detach().clone()
    groups = model.param_groups(lr_trunk=0.02, lr_head=0.05)
    assert [g["name"] for g in groups] == ["head"]
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=1e-4)
    coords, feats, shape, batch = voxel_batch(cfg)
    labels = torch.randint(1, NUM_CLASSES, (len(coords),))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(coords, feats, shape, batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not torch.equal(head_before, model.classifier.weight)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_fine_tuning_groups_have_their_learning_rates():
    model = build_segmentation_model(tiny_config().model.lidar, NUM_CLASSES)
    groups = model.param_groups(lr_trunk=0.02, lr_head=2.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("trunk", 0.02), ("head", 2.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_backbone_logged_to_mlflow_loads_by_run_id(tmp_path):
    from hvdistill.config import TrackingConfig
    from hvdistill.tracking import prepare_tracking, start_tracker

    cfg = tiny_config()
    student = trained_looking_student(cfg)
    run = export_backbone(student, cfg, tmp_path / "pretrain")
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlruns.db")
    uri = prepare_tracking(tracking, run)
    with start_tracker(tracking, run, is_main=True) as tracker:
        tracker.log_artifact(run / "backbone.pt", "backbone")
        tracker.log_artifact(run / "backbone.json", "backbone")
        run_id = tracker.run_id
    model = build_segmentation_model(cfg.model.lidar, NUM_CLASSES).eval()
    report = load(model, f"runs:/{run_id}", cfg, tracking_uri=uri, download_dir=tmp_path / "download")
    assert report.source == "mlflow" and report.meta["step"] == 7
    assert all(
        torch.equal(v, model.backbone.state_dict()[k]) for k, v in student.backbone_state_dict().items()
    )
    with pytest.raises(FileNotFoundError, match="has no backbone.pt artifact"):
        with start_tracker(tracking, run, is_main=True) as empty:
            pass
        load(model, empty.run_id, cfg, tracking_uri=uri, download_dir=tmp_path / "d2")
