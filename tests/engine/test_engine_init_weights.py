"""Starting a training run from saved or released weights (``model.init_weights`` / ``backbone_weights``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine_train import TinyDataset, tiny_overrides

from pspnet.config import load_config
from pspnet.engine.train import train
from pspnet.errors import InputError
from pspnet.io.checkpoint import save_model
from pspnet.io.convert import SEMSEG_PREFIXES, load_init_weights
from pspnet.models.registry import create_model

SMALL_R50 = {"depth": 50, "widths": (4, 4, 8, 8), "stem_width": 8, "head_channels": 16, "aux_channels": 8}


def _distinct(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict where every float tensor holds values no other tensor has."""
    state = {}
    for i, (key, value) in enumerate(model.state_dict().items()):
        if value.is_floating_point():
            value = torch.arange(value.numel(), dtype=torch.float32).reshape(value.shape) * 1e-3 + i
        state[key] = value.clone()
    return state


def _as_semseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = [(ours, theirs) for theirs, ours in SEMSEG_PREFIXES]
    out = {}
    for key, value in state.items():
        ours, theirs = next(pair for pair in inverse if key.startswith(pair[0]))
        out["module." + theirs + key[len(ours) :]] = value
    return out


def test_released_pth_is_converted_and_loaded_even_at_small_width(tmp_path: Path) -> None:
    source = create_model("pspnet50", num_classes=5, **SMALL_R50)
    state = _distinct(source)
    torch.save({"epoch": 3, "state_dict": _as_semseg(state)}, tmp_path / "train_epoch_3.pth")
    target = create_model("pspnet50", num_classes=5, **SMALL_R50)
    report = load_init_weights(target, tmp_path / "train_epoch_3.pth")
    assert report.complete
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_new_label_space_keeps_fresh_classifiers(tmp_path: Path) -> None:
    source = create_model("pspnet_tiny", num_classes=7)
    save_model(source, tmp_path / "seven.safetensors")
    target = create_model("pspnet_tiny", num_classes=4)
    fresh_classifier = target.classifier[4].weight.clone()
    report = load_init_weights(target, tmp_path / "seven.safetensors")
    assert sorted(k for k, _, _ in report.mismatched) == [
        "aux_classifier.4.bias",
        "aux_classifier.4.weight",
        "classifier.4.bias",
        "classifier.4.weight",
    ]
    torch.testing.assert_close(target.classifier[4].weight, fresh_classifier)
    torch.testing.assert_close(target.backbone.layer4[0].conv1.weight, source.backbone.layer4[0].conv1.weight)


def test_unreadable_or_foreign_init_weights_are_refused(tmp_path: Path) -> None:
    target = create_model("pspnet_tiny", num_classes=4)
    with pytest.raises(InputError, match="no such file"):
        load_init_weights(target, tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="junk.safetensors"):
        load_init_weights(target, tmp_path / "junk.safetensors")
    other = create_model("pspnet_tiny", num_classes=4, widths=(8, 8, 8, 8), stem_width=4)
    save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="does not fit the model.s backbone"):
        load_init_weights(target, tmp_path / "other.safetensors")


def test_training_starts_from_init_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = create_model("pspnet_tiny", num_classes=4)
    save_model(source, tmp_path / "start.safetensors")
    overrides = tiny_overrides(tmp_path / "run", **{"optim.iterations": 1})
    overrides.append(f"model.init_weights={tmp_path / 'start.safetensors'}")
    train(load_config(None, overrides), TinyDataset(n=4))
    err = capsys.readouterr().err
    assert "init weights" in err and f"{len(source.state_dict())} tensors loaded" in err


def test_training_starts_from_an_imagenet_backbone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = create_model("pspnet_tiny", num_classes=4)
    stem = {"0.": "conv1.", "1.": "bn1.", "3.": "conv2.", "4.": "bn2.", "6.": "conv3.", "7.": "bn3."}
    imagenet = {"fc.weight": torch.zeros(1000, 8), "fc.bias": torch.zeros(1000)}
    for key, value in source.backbone.state_dict().items():
        if key.startswith("stem."):
            index, rest = key[len("stem.") :].split(".", 1)
            key = stem[index + "."] + rest
        imagenet[key] = value
    torch.save(imagenet, tmp_path / "resnet_tiny_v2.pth")
    overrides = tiny_overrides(tmp_path / "run", **{"optim.iterations": 1})
    overrides.append(f"model.backbone_weights={tmp_path / 'resnet_tiny_v2.pth'}")
    train(load_config(None, overrides), TinyDataset(n=4))
    err = capsys.readouterr().err
    assert "backbone weights" in err and f"{len(source.backbone.state_dict())} tensors loaded" in err


@pytest.mark.parametrize("start", ["random", "init_weights", "tiny_preset"])
def test_a_paper_size_backbone_from_random_weights_is_named_once(
    start: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authors always start from ImageNet weights; a ResNet-50+ run without any says so (the
    shipped configs leave backbone_weights empty, as no weights can be downloaded)."""
    import json

    from pspnet.engine.train_setup import build_model

    overrides = ["model.preset=pspnet50", f"model.overrides={json.dumps(SMALL_R50)}"]
    if start == "init_weights":
        save_model(create_model("pspnet50", num_classes=4, **SMALL_R50), tmp_path / "start.safetensors")
        overrides.append(f"model.init_weights={tmp_path / 'start.safetensors'}")
    if start == "tiny_preset":
        overrides = ["model.preset=pspnet_tiny"]
    build_model(load_config(None, [*overrides, "optim.iterations=1"]), TinyDataset(n=1).info, is_main=True)
    err = capsys.readouterr().err
    noted = "the ResNet-50 backbone starts from random weights" in err and "model.backbone_weights" in err
    assert noted is (start == "random")
