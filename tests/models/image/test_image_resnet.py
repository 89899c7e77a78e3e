"""The ResNets match torchvision's state-dict keys and shapes, and dilation sets the stride."""

import pytest
import torch

from hvdistill.models.image.resnet import dilation_for_output_stride, resnet18, resnet50

# (key, shape) as torchvision.models.resnet50().state_dict() has them
RESNET50_KEYS = [
    ("conv1.weight", (64, 3, 7, 7)),
    ("bn1.running_var", (64,)),
    ("bn1.num_batches_tracked", ()),
    ("layer1.0.conv1.weight", (64, 64, 1, 1)),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)),
    ("layer1.0.conv3.weight", (256, 64, 1, 1)),
    ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
    ("layer1.0.downsample.1.running_mean", (256,)),
    ("layer2.0.downsample.0.weight", (512, 256, 1, 1)),
    ("layer2.3.bn3.weight", (512,)),
    ("layer3.5.conv2.weight", (256, 256, 3, 3)),
    ("layer4.0.downsample.0.weight", (2048, 1024, 1, 1)),
    ("layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("layer4.2.bn3.bias", (2048,)),
    ("fc.weight", (1000, 2048)),
    ("fc.bias", (1000,)),
]
RESNET18_KEYS = [
    ("conv1.weight", (64, 3, 7, 7)),
    ("layer1.0.conv1.weight", (64, 64, 3, 3)),
    ("layer1.1.bn2.running_mean", (64,)),
    ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
    ("layer2.0.downsample.1.weight", (128,)),
    ("layer3.1.conv2.weight", (256, 256, 3, 3)),
    ("layer4.1.conv2.weight", (512, 512, 3, 3)),
    ("fc.weight", (1000, 512)),
]


@pytest.mark.parametrize(
    "build, expected, count", [(resnet50, RESNET50_KEYS, 320), (resnet18, RESNET18_KEYS, 122)]
)
def test_state_dict_keys_match_torchvision(build, expected, count):
    for dilation in (None, [True, True, True]):
        sd = build(dilation).state_dict()
        assert len(sd) == count  # torchvision: 320 (resnet50) and 122 (resnet18) entries
        for key, shape in expected:
            assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in resnet18().state_dict()  # no projection in layer1


def test_resnet50_dilated_has_output_stride_4():
    model = resnet50(dilation_for_output_stride(4)).eval()
    with torch.no_grad():
        out = model.features(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 2048, 16, 24)
    # torchvision's schedule: a dilated stage's first block keeps the previous dilation
    assert [model.layer2[0].conv2.dilation, model.layer2[1].conv2.dilation] == [(1, 1), (2, 2)]
    assert [model.layer4[0].conv2.dilation, model.layer4[1].conv2.dilation] == [(4, 4), (8, 8)]
    assert model.layer2[0].conv2.stride == (1, 1)


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_output_stride_of_each_dilation_setting(stride):
    model = resnet18(dilation_for_output_stride(stride)).eval()
    with torch.no_grad():
        out = model.features(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 512, 64 // stride, 96 // stride)
    assert model.output_stride == stride
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1000)


def test_unknown_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride"):
        dilation_for_output_stride(2)
