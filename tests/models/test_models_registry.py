"""The preset registry and create_model's contract."""

from __future__ import annotations

import pytest
import torch

from pspnet import create_model, list_models
from pspnet.cli import main
from pspnet.data.info import ADE20K, CITYSCAPES, VOC2012
from pspnet.models.registry import ModelPreset, get_preset, register_preset


def test_required_presets_exist() -> None:
    required = {"pspnet50", "pspnet101", "pspnet152", "fcn50", "pspnet18", "pspnet34"}
    required |= {"pspnet50_ade20k", "pspnet101_voc2012", "pspnet101_cityscapes"}
    assert required <= set(list_models())
    assert list_models("fcn*") == sorted(n for n in list_models() if n.startswith("fcn"))
    assert not set(list_models(exclude="*_*")) & {"pspnet50_ade20k"}


@pytest.mark.parametrize(
    ("name", "info"),
    [("pspnet50_ade20k", ADE20K), ("pspnet101_voc2012", VOC2012), ("pspnet101_cityscapes", CITYSCAPES)],
)
def test_dataset_presets_carry_label_space(name: str, info) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert model.dataset_info == info and model.num_classes == info.num_classes
    assert len(info.palette) == len(info.class_names) == info.num_classes
    assert model.preset_name == name


def test_dataset_preset_refuses_other_class_count_naming_both() -> None:
    with pytest.raises(ValueError, match=r"150 classes, got num_classes=21"):
        create_model("pspnet50_ade20k", num_classes=21)


def test_unknown_names_and_options_list_alternatives() -> None:
    with pytest.raises(ValueError, match="unknown model 'pspnet9'; available: .*pspnet50"):
        create_model("pspnet9")
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['colour'\]"):
        create_model("pspnet_tiny", colour=1)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_preset(ModelPreset("pspnet50", get_preset("pspnet50").config, "dup"))


def test_models_command_lists_presets_with_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pspnet5*"]) == 0
    out = capsys.readouterr().out
    # 49.18 M: the authors' PSPNet(layers=50, classes=150) has 49,180,908 parameters
    assert "pspnet50_ade20k" in out and "49.18" in out
    assert main(["models", "nothing*"]) == 2
