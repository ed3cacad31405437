"""Shapes, training contract, ablation options and input validation of PSPNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pspnet import PSPNetConfig, create_model
from pspnet.errors import InputError
from pspnet.models import PSPNet, PyramidPooling, ResNetBackbone

torch.manual_seed(0)


@pytest.mark.parametrize("size", [(64, 64), (97, 129), (70, 51), (33, 100)])
@pytest.mark.parametrize("name", ["pspnet_tiny", "fcn_tiny"])
def test_output_matches_input_size_for_any_size(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert list(out) == ["out"]
    assert out["out"].shape == (2, 3, *size)


@pytest.mark.parametrize(("output_stride", "expected"), [(8, 8), (16, 4), (32, 2)])
def test_output_stride_sets_feature_resolution(output_stride: int, expected: int) -> None:
    backbone = ResNetBackbone(18, output_stride, widths=(8, 8, 8, 8), stem_width=8)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert feats["layer1"].shape[-1] == 16  # 1/4 after the stem
    assert feats["layer4"].shape[-1] == expected


def test_dilation_is_applied_to_every_block_of_dilated_stages() -> None:
    # The authors patch every conv2 of layer3/layer4, including block 0 (torchvision does not).
    backbone = ResNetBackbone(50)
    assert all(block.conv2.dilation == (2, 2) and block.conv2.stride == (1, 1) for block in backbone.layer3)
    assert all(block.conv2.dilation == (4, 4) and block.conv2.stride == (1, 1) for block in backbone.layer4)
    assert backbone.layer3[0].downsample[0].stride == (1, 1)
    assert backbone.layer2[0].conv2.stride == (2, 2) and backbone.layer2[0].conv1.stride == (1, 1)


def test_training_mode_returns_aux_and_both_heads_receive_gradients() -> None:
    model = create_model("pspnet_tiny", num_classes=4).train()
    x = torch.randn(2, 3, 65, 65)
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["aux"].shape == out["out"].shape == (2, 4, 65, 65)
    target = torch.randint(0, 4, (2, 65, 65))
    loss = torch.nn.functional.cross_entropy(out["out"], target) + 0.4 * torch.nn.functional.cross_entropy(
        out["aux"], target
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_aux_head_is_dropped_in_eval_and_absent_when_disabled() -> None:
    model = create_model("pspnet_tiny", num_classes=4, aux=False).train()
    assert model.aux_classifier is None
    assert set(model(torch.randn(2, 3, 32, 32))) == {"out"}


def test_ppm_concatenates_input_and_reduced_branches_in_bin_order() -> None:
    ppm = PyramidPooling(64, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(1, 64, 12, 12)
    y = ppm(x)
    assert y.shape == (1, 64 + 4 * 16, 12, 12)
    assert torch.equal(y[:, :64], x)  # the feature map comes first, untouched
    # the 1x1 bin is spatially constant after upsampling
    first = y[:, 64:80]
    assert torch.allclose(first, first[:, :, :1, :1].expand_as(first))


def test_ablation_options_change_the_network() -> None:
    base = create_model("pspnet_tiny", num_classes=3)
    no_red = create_model("pspnet_tiny", num_classes=3, reduction=False)
    assert no_red.ppm.out_channels == 64 * 5 and base.ppm.out_channels == 64 * 2
    maxpool = create_model("pspnet_tiny", num_classes=3, pooling="max")
    assert isinstance(maxpool.ppm.branches[0][0], torch.nn.AdaptiveMaxPool2d)
    b1 = create_model("pspnet_tiny", num_classes=3, bins=(1,))
    assert b1.ppm.bins == (1,) and len(b1.ppm.branches) == 1
    fcn = create_model("pspnet_tiny", num_classes=3, use_ppm=False)
    assert fcn.ppm is None


def test_authors_size_rule_and_default_agree_on_8n_plus_1() -> None:
    torch.manual_seed(1)
    model = create_model("pspnet_tiny", num_classes=3).eval()
    strict = PSPNet(model.config.replace(size_rule="authors")).eval()
    strict.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], strict(x)["out"])
    with pytest.raises(ValueError, match=r"pad to 73x73"):
        strict(torch.randn(1, 3, 66, 66))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"depth": 42}, "depth must be one of"),
        ({"output_stride": 4}, "output_stride must be one of"),
        ({"pooling": "median"}, "pooling must be one of"),
        ({"bins": (1, 2, 3, 5, 7)}, "must divide the 64 feature channels"),
        ({"stem": "wide"}, "stem must be one of"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("pspnet_tiny", **kwargs)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 64, 64), "expected a 4-D input"),
        ((1, 4, 64, 64), "expected 3 input channels"),
        ((1, 3, 5, 64), "smaller"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(shape: tuple[int, ...], message: str) -> None:
    model = create_model("pspnet_tiny", num_classes=3).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_batch_of_one_in_training_gives_actionable_error() -> None:
    model = create_model("pspnet_tiny", num_classes=3).train()
    with pytest.raises(ValueError, match="batch size 1"):
        model(torch.randn(1, 3, 32, 32))


def test_batch_of_one_trains_when_the_pyramid_batchnorms_are_frozen() -> None:
    """Frozen BatchNorms (eval mode inside a training model, ``model.freeze_bn``) use running
    statistics, so one image is fine; the check follows the 1x1 bin's BatchNorm, not model.training."""
    model = create_model("pspnet_tiny", num_classes=3).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    out = model(torch.randn(1, 3, 32, 32))
    assert set(out) == {"out", "aux"}  # still a training forward (aux head on)
    out["out"].mean().backward()
    model.ppm.branches[0][2].train()  # the 1x1 bin's BatchNorm back on batch statistics
    with pytest.raises(ValueError, match="batch size 1"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: create_model("pspnet_tiny", num_classes="21"), r"num_classes must be an integer, got '21'"),
        (lambda: create_model("pspnet_tiny", num_classes=21.0), "num_classes must be an integer"),
        (lambda: create_model("pspnet_tiny", bins="1236"), "bins must be a sequence of integers"),
        (lambda: create_model("pspnet_tiny", aux="yes"), "aux must be True or False"),
        (lambda: create_model("pspnet_tiny", dropout="0.1"), "dropout must be a number"),
        (lambda: PSPNet({"num_classes": 3}), r"takes a PSPNetConfig, got dict.*PSPNetConfig\.from_dict"),
    ],
)
def test_wrongly_typed_config_is_an_input_error_naming_the_field(make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make()


def test_numpy_numbers_become_python_ones() -> None:
    """Config values are saved as JSON: a NumPy class count (e.g. read from an array) must not break it."""
    config = PSPNetConfig(num_classes=np.int64(5), dropout=np.float32(0.5))
    assert type(config.num_classes) is int and type(config.dropout) is float
    assert config.num_classes == 5 and config.dropout == 0.5


def test_config_round_trips_through_dict() -> None:
    cfg = PSPNetConfig(num_classes=7, depth=101, bins=(1, 3), pooling="max")
    assert PSPNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PSPNetConfig fields"):
        PSPNetConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_full_size_pspnet50_has_authors_parameter_count() -> None:
    with torch.device("meta"):
        model = create_model("pspnet50", num_classes=150)
        model101 = create_model("pspnet101", num_classes=21)
    # Counted on hszhao/semseg's own model: PSPNet(layers=50, classes=150) has 370 state tensors and
    # 49,180,908 parameters; PSPNet(layers=101, classes=21) 676 tensors and 68,073,706 parameters.
    assert len(model.state_dict()) == 370
    assert sum(p.numel() for p in model.parameters()) == 49_180_908
    assert len(model101.state_dict()) == 676
    assert sum(p.numel() for p in model101.parameters()) == 68_073_706
