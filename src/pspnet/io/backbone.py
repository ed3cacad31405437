"""ImageNet backbone weights for training: the authors' deep-stem ResNets and torchvision's.

Nobody trains PSPNet from scratch. These importers map a classification checkpoint's keys onto
``model.backbone``, drop the classifier (``fc``), and report which tensors were loaded and which
(PPM, heads) keep their fresh initialisation. Dilation has no parameters, so the same ImageNet
weights serve any output stride.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import Tensor

from pspnet.errors import InputError
from pspnet.io.checkpoint import LoadReport, load_state_dict_into, read_torch_file
from pspnet.io.convert import unwrap_state_dict
from pspnet.models.pspnet import PSPNet

__all__ = ["BACKBONE_STEMS", "backbone_state_dict", "load_backbone_weights"]

# stem parameter prefix in the source -> index in our Sequential stem
BACKBONE_STEMS: dict[str, dict[str, str]] = {
    # hszhao/semseg initmodel resnet50_v2.pth / resnet101_v2.pth (deep stem 64-64-128)
    "deep": {"conv1.": "0.", "bn1.": "1.", "conv2.": "3.", "bn2.": "4.", "conv3.": "6.", "bn3.": "7."},
    # torchvision resnet50/101 (one 7x7 conv)
    "classic": {"conv1.": "0.", "bn1.": "1."},
}


def backbone_state_dict(state: Mapping[str, Tensor], stem: str) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an ImageNet ResNet state dict to ``backbone.*`` keys; returns (mapped, dropped keys)."""
    if stem not in BACKBONE_STEMS:
        raise InputError(f"unknown stem {stem!r}; supported: {sorted(BACKBONE_STEMS)}")
    stem_map = BACKBONE_STEMS[stem]
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith("layer"):
            mapped[f"backbone.{key}"] = value
            continue
        prefix = next((p for p in stem_map if key.startswith(p)), None)
        if prefix is not None:
            mapped[f"backbone.stem.{stem_map[prefix]}{key[len(prefix) :]}"] = value
        elif key.startswith("fc."):
            dropped.append(key)  # the ImageNet classifier has no place in a segmentation model
        else:
            raise InputError(f"unexpected key {key!r} for a {stem}-stem ResNet checkpoint")
    return mapped, dropped


def load_backbone_weights(model: PSPNet, path: str | os.PathLike[str]) -> LoadReport:
    """Load ImageNet ResNet weights into ``model.backbone``; PPM and heads stay freshly initialised.

    The stem type comes from the model's config (``stem="deep"`` for the authors' weights,
    ``"classic"`` for torchvision's). Every backbone tensor must be found with the right shape;
    the report lists the head tensors that were left as initialised.
    """
    state = unwrap_state_dict(read_torch_file(path), str(path))
    mapped, _ = backbone_state_dict(state, model.config.stem)
    report = load_state_dict_into(model, mapped, allow_partial=True)
    backbone_missing = [k for k in report.missing if k.startswith("backbone.")]
    if backbone_missing or report.unexpected or report.mismatched:
        raise InputError(
            f"{path}: does not fit the {model.config.stem}-stem ResNet-{model.config.depth} backbone: "
            f"{report.summary()}"
        )
    return report
