"""Model presets as data, and the ``create_model`` / ``list_models`` entry points.

A preset is a frozen :class:`ModelPreset`: a :class:`PSPNetConfig` plus, for dataset presets, the
label space (:class:`DatasetInfo`) and the preprocessing the weights expect. New variants are
``dataclasses.replace`` of an existing config, not new code.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, fields
from typing import Any

from pspnet.data.info import ADE20K, CITYSCAPES, VOC2012, DatasetInfo
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.models.pspnet import PSPNet, PSPNetConfig

__all__ = ["ModelPreset", "create_model", "get_preset", "list_models", "register_preset"]


@dataclass(frozen=True)
class ModelPreset:
    """A named, buildable model description."""

    name: str
    config: PSPNetConfig
    description: str
    dataset: DatasetInfo | None = None
    preprocess: Preprocess = field(default=PYTORCH_PREPROCESS)


_PRESETS: dict[str, ModelPreset] = {}


def register_preset(preset: ModelPreset) -> ModelPreset:
    """Add a preset; a name can be registered once."""
    key = preset.name.lower()
    if key in _PRESETS:
        raise ValueError(f"model preset {preset.name!r} is already registered")
    if preset.dataset is not None and preset.dataset.num_classes != preset.config.num_classes:
        raise ValueError(
            f"preset {preset.name!r}: dataset {preset.dataset.name!r} has {preset.dataset.num_classes} "
            f"classes but the config says {preset.config.num_classes}"
        )
    _PRESETS[key] = preset
    return preset


def list_models(include: str | None = None, exclude: str | None = None) -> list[str]:
    """Registered preset names, optionally filtered with shell-style patterns (``"pspnet*"``)."""
    names = sorted(_PRESETS)
    if include:
        names = [n for n in names if fnmatch.fnmatch(n, include.lower())]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatch(n, exclude.lower())]
    return names


def get_preset(name: str) -> ModelPreset:
    """The registered description behind a name of :func:`list_models`, without building anything.

    Use it to read what :func:`create_model` would build, e.g.
    ``get_preset("pspnet50_ade20k").config.num_classes`` (150) or ``.dataset.class_names``.

    Args:
        name: a preset name, case-insensitive (``pspnet models`` lists them).

    Returns:
        A :class:`pspnet.models.ModelPreset`: ``name``, ``config`` (:class:`PSPNetConfig`),
        ``description``, ``dataset`` (:class:`~pspnet.data.info.DatasetInfo` or None) and
        ``preprocess``. It is frozen and shared: build models with :func:`create_model`.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    key = name.lower()
    if key not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_PRESETS))}")
    return _PRESETS[key]


_CONFIG_FIELDS = frozenset(f.name for f in fields(PSPNetConfig))


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> PSPNet:
    """Build a preset, e.g. ``create_model("pspnet50", num_classes=21)``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output classes. Dataset presets fix it (a different value raises, naming
            both); generic presets default to 21.
        backbone_weights: an ImageNet ResNet checkpoint loaded into the backbone, its source
            detected from its keys: the authors' ``resnet50_v2.pth`` (deep stem), torchvision's
            (``stem="classic"``), timm ``resnet50d`` (``stem_width=32, avg_down=True``) or OpenMMLab
            ``resnet50_v1c`` (``stem_width=32``); a model that does not fit the file is refused
            with the overrides to pass. The PPM and heads keep their fresh initialisation. See
            :func:`pspnet.io.backbone.load_backbone_weights`.
        **overrides: any :class:`PSPNetConfig` field, e.g. ``bins=(1, 2)``, ``pooling="max"``,
            ``use_ppm=False``, ``output_stride=16``: the paper's ablations are arguments.

    Returns:
        A :class:`PSPNet` in training mode, carrying ``preset_name``, ``dataset_info`` and
        ``preprocess`` so that prediction and saving need nothing else.
    """
    preset = get_preset(name)
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; allowed: {sorted(_CONFIG_FIELDS)}")
    dataset = preset.dataset
    if num_classes is not None:
        if dataset is not None and num_classes != dataset.num_classes:
            raise ValueError(
                f"model {name!r} is built for {dataset.name} with {dataset.num_classes} classes, "
                f"got num_classes={num_classes}; use the generic preset (e.g. 'pspnet{preset.config.depth}') "
                "to train another label space"
            )
        overrides["num_classes"] = num_classes
    model = attach_metadata(
        PSPNet(preset.config.replace(**overrides)), preset.name, dataset, preset.preprocess
    )
    if backbone_weights is not None:
        from pspnet.io.backbone import load_backbone_weights

        load_backbone_weights(model, backbone_weights)
    return model


def attach_metadata(
    model: PSPNet, preset_name: str, dataset: DatasetInfo | None, preprocess: Preprocess
) -> PSPNet:
    """Record where a model came from and how to feed it (read by save, predict and eval)."""
    model.preset_name = preset_name
    model.dataset_info = dataset
    model.preprocess = preprocess
    return model


# --- the preset table -------------------------------------------------------------------------

_AUTHORS = PSPNetConfig()  # ResNet-50, deep stem, OS 8, bins 1-2-3-6, avg, reduction, aux
_BASIC = _AUTHORS.replace(depth=18, head_channels=256, aux_channels=128)
_TINY = _AUTHORS.replace(depth=18, stem_width=16, widths=(16, 32, 48, 64), head_channels=64, aux_channels=32)

for _depth in (50, 101, 152):
    register_preset(
        ModelPreset(f"pspnet{_depth}", _AUTHORS.replace(depth=_depth), f"PSPNet, dilated ResNet-{_depth}")
    )
    register_preset(
        ModelPreset(
            f"fcn{_depth}",
            _AUTHORS.replace(depth=_depth, use_ppm=False),
            f"dilated FCN baseline (no PPM), ResNet-{_depth}",
        )
    )
for _depth in (18, 34):
    register_preset(
        ModelPreset(f"pspnet{_depth}", _BASIC.replace(depth=_depth), f"PSPNet, ResNet-{_depth} (CPU size)")
    )
    register_preset(
        ModelPreset(
            f"fcn{_depth}",
            _BASIC.replace(depth=_depth, use_ppm=False),
            f"dilated FCN baseline, ResNet-{_depth} (CPU size)",
        )
    )
register_preset(ModelPreset("pspnet_tiny", _TINY, "PSPNet, ResNet-18 layout at 1/4 width (demo, tests)"))
register_preset(
    ModelPreset("fcn_tiny", _TINY.replace(use_ppm=False), "dilated FCN baseline at tiny width (demo, tests)")
)
for _info in (ADE20K, VOC2012, CITYSCAPES):
    for _depth in (50, 101):
        register_preset(
            ModelPreset(
                f"pspnet{_depth}_{_info.name}",
                _AUTHORS.replace(depth=_depth, num_classes=_info.num_classes),
                f"PSPNet-{_depth} for {_info.name} ({_info.num_classes} classes, crop {_info.crop_size})",
                dataset=_info,
            )
        )
