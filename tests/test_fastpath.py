"""BatchNorm folding and the inference runner compute the eager model's logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pspnet import create_model
from pspnet.errors import InputError
from pspnet.fastpath import find_conv_bn_pairs, fold_batchnorm, prepare_for_inference


def _model_with_random_bn(preset: str = "pspnet_tiny") -> nn.Module:
    """Non-trivial running statistics and affine terms, else folding would be a no-op to test."""
    torch.manual_seed(0)
    model = create_model(preset, num_classes=5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("preset", ["pspnet_tiny", "fcn_tiny"])
@pytest.mark.parametrize("size", [(64, 64), (97, 129), (41, 72)])
def test_folded_model_matches_eager(preset: str, size: tuple[int, int]) -> None:
    model = _model_with_random_bn(preset)
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)["out"]
        got = folded(x)["out"]
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_every_bn_on_the_eval_path_is_folded_and_the_original_untouched() -> None:
    model = _model_with_random_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    remaining = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # Only the auxiliary head keeps its BN: it does not run in eval mode, so nothing feeds it.
    assert remaining and all(n.startswith("aux_classifier.") for n in remaining)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > len(remaining)


def test_pairs_follow_data_flow_not_module_order() -> None:
    class Swapped(nn.Module):  # bn declared before conv, and a conv whose output skips its BN
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.other = nn.Conv2d(3, 4, 1)
            self.other_bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.bn(self.conv(x)) + self.other_bn(torch.relu(self.other(x)))}

    model = Swapped().eval()
    assert find_conv_bn_pairs(model, torch.randn(1, 3, 8, 8)) == [("conv", "bn")]


def test_runner_channels_last_matches_eager() -> None:
    model = _model_with_random_bn()
    runner = prepare_for_inference(model, device="cpu", channels_last=True, fold_bn=True)
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        expected = model(x)["out"]
    got = runner(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_autocast_is_refused_on_cpu() -> None:
    model = _model_with_random_bn()
    with pytest.raises(InputError, match="CUDA"):
        prepare_for_inference(model, device="cpu", amp_dtype=torch.bfloat16)
