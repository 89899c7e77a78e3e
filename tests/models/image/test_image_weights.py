"""Teacher checkpoints load from MoCo, DINO and torchvision files; pickles are refused."""

import argparse
import copy
import pathlib

import pytest
import torch

from hvdistill.config import ImageModelConfig, ModelConfig, PrecisionConfig
from hvdistill.models.image import ImageTeacher, build_image_teacher, load_teacher_weights, resnet18


class Payload:
    """Unpickling this would create a file; weights-only loading must refuse it."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def source_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = resnet18()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # make buffers distinguishable from defaults
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def moco_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    sd = {f"module.encoder_q.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)  # MoCo-v2 MLP projection head
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    sd["module.encoder_k.conv1.weight"] = torch.randn(64, 3, 7, 7)
    return {"epoch": 800, "arch": "resnet18", "state_dict": sd}


def assert_backbone_equals(teacher: ImageTeacher, state: dict[str, torch.Tensor], skip=()) -> None:
    own = teacher.backbone.state_dict()
    for key, value in own.items():
        if key not in skip:
            assert torch.equal(value, state[key]), key


def test_moco_checkpoint_loads_and_drops_heads(tmp_path):
    state = source_state()
    path = tmp_path / "moco.pth"
    torch.save(moco_checkpoint(state), path)
    teacher = ImageTeacher("resnet18")
    report = load_teacher_weights(teacher, path, "auto")
    assert report.format == "moco"
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert {"fc.0.weight", "fc.2.weight", "module.encoder_k.conv1.weight"} <= set(report.dropped)
    assert len(report.loaded) == len(teacher.backbone.state_dict())
    assert_backbone_equals(teacher, state)


def partial_checkpoint(tmp_path, removed: list[str], extra: dict[str, torch.Tensor]) -> pathlib.Path:
    ckpt = moco_checkpoint(source_state())
    for key in removed:
        del ckpt["state_dict"][f"module.encoder_q.{key}"]
    for key, value in extra.items():
        ckpt["state_dict"][f"module.encoder_q.{key}"] = value
    torch.save(ckpt, tmp_path / "partial.pth")
    return tmp_path / "partial.pth"


def test_a_missing_key_fails_by_default_and_loads_with_the_switch(tmp_path):
    removed = ["layer3.1.conv2.weight", "layer4.0.bn1.running_var"]
    path = partial_checkpoint(tmp_path, removed, {})
    teacher = ImageTeacher("resnet18")
    before = copy.deepcopy(teacher.backbone.state_dict())
    with pytest.raises(ValueError) as err:
        load_teacher_weights(teacher, path, "moco")
    message = str(err.value)
    assert "2 missing (layer3.1.conv2.weight, layer4.0.bn1.running_var)" in message
    assert "allow_partial_weights=true" in message and "unexpected" not in message
    assert all(torch.equal(v, before[k]) for k, v in teacher.backbone.state_dict().items())  # untouched
    report = load_teacher_weights(teacher, path, "moco", allow_partial=True)
    assert report.missing == sorted(removed) and report.unexpected == []
    assert_backbone_equals(teacher, source_state(), skip=removed)


def test_an_extra_or_mis_shaped_key_fails_by_default(tmp_path):
    path = partial_checkpoint(tmp_path, [], {"layer9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected \(layer9\.weight\)"):
        load_teacher_weights(ImageTeacher("resnet18"), path, "moco")
    report = load_teacher_weights(ImageTeacher("resnet18"), path, "moco", allow_partial=True)
    assert report.unexpected == ["layer9.weight"] and report.missing == []
    path = partial_checkpoint(tmp_path, [], {"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"1 mismatched \(conv1\.weight: given \(64, 3, 3, 3\)"):
        load_teacher_weights(ImageTeacher("resnet18"), path, "moco")


def test_many_problems_are_listed_truncated_with_counts(tmp_path):
    state = source_state()
    removed = sorted(k for k in state if k.startswith("layer4.") and "num_batches" not in k)[:14]
    with pytest.raises(ValueError) as err:
        load_teacher_weights(ImageTeacher("resnet18"), partial_checkpoint(tmp_path, removed, {}), "moco")
    assert f"14 missing ({', '.join(removed[:10])}, ... and 4 more)" in str(err.value)


def test_only_num_batches_tracked_may_be_absent(tmp_path):
    state = {k: v for k, v in source_state().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    teacher = ImageTeacher("resnet18")
    report = load_teacher_weights(teacher, tmp_path / "old.pth", "torchvision")
    assert report.unexpected == [] and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert_backbone_equals(teacher, state, skip=report.missing)


def test_the_config_switch_reaches_the_loader(tmp_path):
    path = partial_checkpoint(tmp_path, ["layer1.0.bn2.bias"], {})
    precision = PrecisionConfig(image_dtype="float32")
    image = ImageModelConfig(arch="resnet18", weights=str(path))
    with pytest.raises(ValueError, match="1 missing"):
        build_image_teacher(ModelConfig(image=image), precision)
    image.allow_partial_weights = True
    teacher = build_image_teacher(ModelConfig(image=image), precision)
    assert teacher.load_report.missing == ["layer1.0.bn2.bias"]


@pytest.mark.parametrize("fmt", ["dino", "torchvision"])
def test_plain_state_dicts_load(tmp_path, fmt):
    state = source_state()
    if fmt == "dino":  # DINO's ResNet-50 release: torchvision keys without fc
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "plain.pth")
    teacher = ImageTeacher("resnet18")
    report = load_teacher_weights(teacher, tmp_path / "plain.pth", "auto")
    assert report.format == fmt
    assert report.missing == [] and report.unexpected == []
    assert ("fc.weight" in report.dropped) == (fmt == "torchvision")
    assert_backbone_equals(teacher, state)


def test_full_dino_checkpoint_uses_the_teacher_backbone(tmp_path):
    state = source_state()
    teacher_sd = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    teacher_sd["head.mlp.0.weight"] = torch.randn(8, 512)
    args = argparse.Namespace(arch="resnet50", out_dim=60000)  # as DINO's main_dino.py saves it
    torch.save({"teacher": teacher_sd, "student": {}, "epoch": 100, "args": args}, tmp_path / "dino_full.pth")
    teacher = ImageTeacher("resnet18")
    report = load_teacher_weights(teacher, tmp_path / "dino_full.pth")
    assert report.format == "dino" and report.missing == [] and "head.mlp.0.weight" in report.dropped
    assert_backbone_equals(teacher, state)


def test_pickled_objects_are_never_executed(tmp_path):
    marker = tmp_path / "was_unpickled"
    torch.save({"state_dict": {"x": Payload(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="unpickling"):
        load_teacher_weights(ImageTeacher("resnet18"), tmp_path / "evil.pth")
    assert not marker.exists()


def test_nothing_matching_is_an_error(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="no key matched"):
        load_teacher_weights(ImageTeacher("resnet18"), tmp_path / "wrong.pth", "torchvision")


def test_random_init_must_be_explicit(tmp_path):
    precision = PrecisionConfig(image_dtype="float32")
    with pytest.raises(ValueError, match="random_init"):
        build_image_teacher(ModelConfig(image=ImageModelConfig(arch="resnet18")), precision)
    teacher = build_image_teacher(
        ModelConfig(image=ImageModelConfig(arch="resnet18", random_init=True)), precision
    )
    assert teacher.load_report is None
    state = source_state()
    torch.save(state, tmp_path / "tv.pth")
    cfg = ModelConfig(image=ImageModelConfig(arch="resnet18", weights=str(tmp_path / "tv.pth")))
    teacher = build_image_teacher(cfg, precision)
    assert teacher.load_report.format == "torchvision"
    assert_backbone_equals(teacher, state)


@pytest.mark.parametrize("content", [b"hello\n", b"", b"PK\x03\x04truncated"])
def test_a_file_that_is_no_checkpoint_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"model.image.weights: {path} is not a readable checkpoint"):
        load_teacher_weights(resnet18(), path)
    with pytest.raises(ValueError, match="is a directory"):
        load_teacher_weights(resnet18(), tmp_path)
