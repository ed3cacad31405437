"""ImageNet backbone import: every source tensor lands in the right place, fc is dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pspnet import create_model
from pspnet.errors import InputError
from pspnet.io.backbone import load_backbone_weights

# Key names of torchvision's resnet18 (classic stem) and of the authors' deep-stem ResNet,
# written out here independently of our module names.
TORCHVISION_STEM = {"conv1.weight": "backbone.stem.0.weight", "bn1.weight": "backbone.stem.1.weight"}
DEEP_STEM = {
    "conv1.weight": "backbone.stem.0.weight",
    "bn2.running_var": "backbone.stem.4.running_var",
    "conv3.weight": "backbone.stem.6.weight",
    "bn3.bias": "backbone.stem.7.bias",
}


def _source_state(model, stem_table: dict[str, str]) -> dict[str, torch.Tensor]:
    """A classification checkpoint with distinct values per tensor (value = tensor number)."""
    state = {}
    for number, (key, value) in enumerate(model.backbone.state_dict().items()):
        if key.startswith("stem."):
            index, rest = key[len("stem.") :].split(".", 1)
            name = stem_table[index] + rest
        else:
            name = key
        state[name] = torch.full_like(value, float(number)) if value.is_floating_point() else value.clone()
    state["fc.weight"] = torch.zeros(1000, 8)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize(
    ("stem", "table", "spot_checks"),
    [
        ("classic", {"0": "conv1.", "1": "bn1."}, TORCHVISION_STEM),
        (
            "deep",
            {"0": "conv1.", "1": "bn1.", "3": "conv2.", "4": "bn2.", "6": "conv3.", "7": "bn3."},
            DEEP_STEM,
        ),
    ],
)
def test_every_backbone_tensor_lands_in_place(
    stem: str, table: dict[str, str], spot_checks, tmp_path: Path
) -> None:
    model = create_model("pspnet_tiny", num_classes=3, stem=stem)
    state = _source_state(model, table)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "imagenet.pth")
    fresh_head = model.classifier[0].weight.clone()
    report = load_backbone_weights(model, tmp_path / "imagenet.pth")
    via_factory = create_model(
        "pspnet_tiny", num_classes=3, stem=stem, backbone_weights=tmp_path / "imagenet.pth"
    )
    assert torch.equal(via_factory.backbone.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)
    ours = model.state_dict()
    for theirs, our_key in spot_checks.items():
        assert torch.equal(ours[our_key], state[theirs]), (theirs, our_key)
    for key, value in state.items():
        if key.startswith("layer"):
            assert torch.equal(ours[f"backbone.{key}"], value), key
    assert all(k.startswith(("ppm.", "classifier.", "aux_classifier.")) for k in report.missing)
    assert torch.equal(model.classifier[0].weight, fresh_head)  # heads keep their initialisation


def test_wrong_stem_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    classic = create_model("pspnet_tiny", num_classes=3, stem="classic")
    state = _source_state(classic, {"0": "conv1.", "1": "bn1."})
    torch.save(state, tmp_path / "tv.pth")
    with pytest.raises(InputError, match="deep-stem ResNet-18"):
        load_backbone_weights(create_model("pspnet_tiny", num_classes=3), tmp_path / "tv.pth")
