"""Backbone variants other sources need (avg-down, contracted dilation, Caffe stride) and the decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pspnet import create_model
from pspnet.models import PSPNet
from pspnet.models.resnet import Bottleneck, ResNetBackbone


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomise_bn(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_bottleneck_stride_position_matches_hand_computation(stride_in_1x1: bool) -> None:
    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, 2, bias=False), torch.nn.BatchNorm2d(16))
    block = Bottleneck(8, 4, stride=2, downsample=down, stride_in_1x1=stride_in_1x1).eval()
    _randomise_bn(block)
    x = torch.randn(1, 8, 11, 13)
    s1, s3 = (2, 1) if stride_in_1x1 else (1, 2)
    h = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=s1), block.bn1))
    h = F.relu(_bn(F.conv2d(h, block.conv2.weight, stride=s3, padding=1), block.bn2))
    h = _bn(F.conv2d(h, block.conv3.weight), block.bn3)
    shortcut = _bn(F.conv2d(x, down[0].weight, stride=2), down[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(h + shortcut))


def test_stride_in_1x1_changes_the_function_not_the_weights() -> None:
    a = create_model("pspnet18", num_classes=3, depth=50, widths=(8, 8, 8, 8), stem_width=8).eval()
    b = create_model(
        "pspnet18", num_classes=3, depth=50, widths=(8, 8, 8, 8), stem_width=8, stride_in_1x1=True
    )
    b.load_state_dict(a.state_dict())
    b.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert not torch.allclose(a(x)["out"], b(x)["out"])
    assert b.backbone.layer2[0].conv1.stride == (2, 2) and b.backbone.layer2[0].conv2.stride == (1, 1)


def test_avg_down_shortcut_pools_then_projects() -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(50, widths=(8, 4, 8, 8), stem_width=8, avg_down=True).eval()
    _randomise_bn(backbone)
    shortcut = backbone.layer2[0].downsample
    # keys as in timm resnet*d / OpenMMLab v1d: downsample.1 = conv, downsample.2 = BN
    assert isinstance(shortcut[1], torch.nn.Conv2d) and isinstance(shortcut[2], torch.nn.BatchNorm2d)
    assert shortcut[1].stride == (1, 1)
    x = torch.randn(1, 32, 7, 9)  # odd sizes: the pool's ceil mode and pad exclusion matter
    pooled = torch.stack(
        [
            torch.stack([x[..., i : i + 2, j : j + 2].mean(dim=(-2, -1)) for j in range(0, 9, 2)], -1)
            for i in range(0, 7, 2)
        ],
        -2,
    )
    expected = _bn(F.conv2d(pooled, shortcut[1].weight), shortcut[2])
    with torch.no_grad():
        torch.testing.assert_close(shortcut(x), expected)
    # unstrided shortcuts keep the same key layout with an identity pool
    assert isinstance(backbone.layer1[0].downsample[0], torch.nn.Identity)


def test_contract_dilation_halves_the_first_block_of_dilated_stages() -> None:
    backbone = ResNetBackbone(50, widths=(4, 4, 4, 4), stem_width=8, contract_dilation=True)
    assert backbone.layer3[0].conv2.dilation == (1, 1) and backbone.layer3[1].conv2.dilation == (2, 2)
    assert backbone.layer4[0].conv2.dilation == (2, 2) and backbone.layer4[1].conv2.dilation == (4, 4)
    assert backbone.layer3[0].conv2.padding == (1, 1)
    assert backbone.layer2[0].conv2.dilation == (1, 1)


def test_refine_decoder_starts_equal_to_bilinear_and_learns() -> None:
    torch.manual_seed(0)
    bilinear = create_model("pspnet_tiny", num_classes=4).eval()
    refine = create_model("pspnet_tiny", num_classes=4, decoder="refine")
    missing, unexpected = refine.load_state_dict(bilinear.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("decoder.") for k in missing)
    refine.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(refine(x)["out"], bilinear(x)["out"])
    assert refine.decoder in refine.head_modules()  # trained at the heads' 10x lr
    refine.train()
    out = refine(x)
    F.cross_entropy(out["out"], torch.randint(0, 4, (2, 64, 80))).backward()
    assert refine.decoder.refine[-1].weight.grad.abs().sum() > 0


def test_refine_decoder_output_has_quarter_resolution_detail() -> None:
    model = PSPNet(create_model("pspnet_tiny", num_classes=3).config.replace(decoder="refine")).eval()
    with torch.no_grad():
        model.decoder.refine[-1].weight.normal_()
    seen: dict[str, torch.Size] = {}

    def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen["shape"] = output.shape

    model.decoder.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert seen["shape"] == (1, 3, 16, 24)


def test_unknown_decoder_is_refused() -> None:
    with pytest.raises(ValueError, match="decoder must be one of"):
        create_model("pspnet_tiny", num_classes=3, decoder="deconv")
