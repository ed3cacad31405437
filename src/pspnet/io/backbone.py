"""ImageNet backbone weights for training: the authors' deep-stem ResNets, torchvision's, timm's, OpenMMLab's.

Nobody trains PSPNet from scratch. These importers map a classification checkpoint's keys onto
``model.backbone``, drop the classifier, and report which tensors were loaded and which (PPM,
heads) keep their fresh initialisation. Dilation has no parameters, so the same ImageNet weights
serve any output stride.

The sources differ in their stem and in their shortcut, and the model must be built to match
(a 32-wide stem cannot hold 64-wide weights, an average-pool shortcut is a different function):

- ``semseg``: the authors' ``resnet50_v2.pth``/``resnet101_v2.pth``, deep stem 64-64-128 keyed
  ``conv1/bn1/conv2/bn2/conv3/bn3``. Fits the default presets (``stem="deep"``, ``stem_width=64``).
- ``torchvision``: ``resnet50``/``resnet101``, one 7x7 conv ``conv1/bn1``. Needs ``stem="classic"``.
- ``timm``: ``resnet50d``/``resnet101d``, deep stem 32-32-64 keyed ``conv1.{0,1,3,4,6}`` + ``bn1``,
  average-pool shortcuts ``downsample.{1,2}``. Needs ``stem_width=32, avg_down=True``.
- ``openmmlab``: ``resnet50_v1c``/``resnet101_v1c`` (mmcv model zoo, as MMSegmentation loads them:
  ``stem.{0,1,3,4,6,7}``; or mmpretrain's ``backbone.stem.{0,1,2}.conv/bn`` + ``head.fc``). Needs
  ``stem_width=32`` (and ``avg_down=True`` for the ``v1d`` variants).

``load_backbone_weights(model, path)`` detects the source from the key names; a model that does not
match is refused with the exact ``create_model`` overrides to use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from pspnet.errors import InputError
from pspnet.io.checkpoint import LoadReport, load_state_dict_into, read_release_file
from pspnet.io.convert import unwrap_state_dict
from pspnet.models.pspnet import PSPNet

__all__ = [
    "BACKBONE_SOURCES",
    "BACKBONE_STEMS",
    "BackboneLayout",
    "BackboneReport",
    "backbone_state_dict",
    "detect_backbone_source",
    "imagenet_to_backbone",
    "load_backbone_weights",
    "read_backbone_file",
]

# stem parameter prefix in the source -> index in our Sequential stem (kept for the two original sources)
BACKBONE_STEMS: dict[str, dict[str, str]] = {
    # hszhao/semseg initmodel resnet50_v2.pth / resnet101_v2.pth (deep stem 64-64-128)
    "deep": {"conv1.": "0.", "bn1.": "1.", "conv2.": "3.", "bn2.": "4.", "conv3.": "6.", "bn3.": "7."},
    # torchvision resnet50/101 (one 7x7 conv)
    "classic": {"conv1.": "0.", "bn1.": "1."},
}

# source -> stem prefix map, for each stem layout that source publishes
_STEM_MAPS: dict[str, dict[str, str]] = {
    "semseg": BACKBONE_STEMS["deep"],
    "torchvision": BACKBONE_STEMS["classic"],
    # timm ResNet(stem_type='deep'): conv1 = Sequential(conv, bn, act, conv, bn, act, conv); bn1 after it
    "timm": {
        "conv1.0.": "0.",
        "conv1.1.": "1.",
        "conv1.3.": "3.",
        "conv1.4.": "4.",
        "conv1.6.": "6.",
        "bn1.": "7.",
    },
    # mmseg/mmdet/mmcv-zoo ResNetV1c: stem = Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu)
    "openmmlab": {f"stem.{i}.": f"{i}." for i in (0, 1, 3, 4, 6, 7)},
    # mmpretrain/mmcls ResNetV1c: stem = Sequential(ConvModule x 3), each ``conv`` + ``bn``
    "mmpretrain": {
        "stem.0.conv.": "0.",
        "stem.0.bn.": "1.",
        "stem.1.conv.": "3.",
        "stem.1.bn.": "4.",
        "stem.2.conv.": "6.",
        "stem.2.bn.": "7.",
    },
}

BACKBONE_SOURCES = ("semseg", "torchvision", "timm", "openmmlab")

# source -> (what it is, written before the depth: "<name>-50"; where it comes from, or "")
_DESCRIPTIONS = {
    "semseg": ("hszhao/semseg ResNet", "resnet*_v2.pth"),
    "torchvision": ("torchvision-style ResNet", ""),
    "timm": ("timm ResNet", ""),
    "openmmlab": ("OpenMMLab ResNet", ""),
}

# (bottleneck blocks?, blocks in layer3) -> depth
_DEPTHS = {(True, 6): 50, (True, 23): 101, (True, 36): 152, (False, 2): 18, (False, 6): 34}

_LAYER_KEY = re.compile(r"layer[1-4]\.\d+\.(?:conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.[0-2]\.\w+)")
_CLASSIFIER = ("fc.", "head.fc.", "classifier.")


def _a(text: str) -> str:
    """``text`` with its indefinite article, for messages."""
    return f"{'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


@dataclass(frozen=True)
class BackboneLayout:
    """What an ImageNet checkpoint's key names and shapes say about the network that made it."""

    source: str
    stem: str
    stem_width: int
    avg_down: bool
    depth: int | None

    def describe(self) -> str:
        stem = (
            f"deep stem {self.stem_width}-{self.stem_width}-{2 * self.stem_width}"
            if self.stem == "deep"
            else f"7x7 stem {self.stem_width}"
        )
        shortcut = ", avg-pool shortcuts" if self.avg_down else ""
        depth = f"-{self.depth}" if self.depth else ""
        name, origin = _DESCRIPTIONS[self.source]
        return f"{name}{depth} ({stem}{shortcut}{', ' + origin if origin else ''})"


@dataclass
class BackboneReport(LoadReport):
    """A :class:`LoadReport` that also says which source was read and what was left out of it."""

    source: str = ""
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self, limit: int = 8) -> str:
        text = f"{self.source}: {super().summary(limit)}"
        if self.dropped:
            text += f"; {len(self.dropped)} classifier tensors dropped ({', '.join(self.dropped[:limit])})"
        if self.skipped:
            text += f"; pickled objects skipped, never imported or run: {', '.join(self.skipped[:limit])}"
        return text


def read_backbone_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of an ImageNet checkpoint: ``.safetensors`` (timm on the Hugging Face Hub) or torch.

    Torch files are read by :func:`~pspnet.io.checkpoint.read_release_file`: bookkeeping objects
    pickled next to the weights are replaced by inert stand-ins (never imported or run), code is
    refused.
    """
    return _read_backbone_file(path)[0]


def _read_backbone_file(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """(tensors, pickled names skipped by the reader)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), ()
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    release = read_release_file(path)
    return unwrap_state_dict(release.content, str(path)), release.skipped


def _strip_backbone_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmpretrain classifiers save ``backbone.*`` + ``head.*``; bring the backbone to the top level."""
    if not any(k.startswith("backbone.") for k in state):
        return dict(state)
    return {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in state.items()}


def detect_backbone_source(state: Mapping[str, Tensor]) -> str:
    """Name the source of an ImageNet ResNet state dict from its stem keys."""
    keys = set(_strip_backbone_prefix(state))
    if "conv1.0.weight" in keys:
        return "timm"
    if "stem.0.weight" in keys or "stem.0.conv.weight" in keys:
        return "openmmlab"
    if "conv2.weight" in keys and "bn3.weight" in keys:
        return "semseg"
    if "conv1.weight" in keys:
        return "torchvision"
    raise InputError(
        "not an ImageNet ResNet checkpoint: no stem found (conv1.* as in torchvision/timm/the authors, "
        f"stem.* as in OpenMMLab); first keys: {sorted(keys)[:5]}"
    )


def _stem_map(source: str, keys: set[str]) -> dict[str, str]:
    if source == "timm" and "conv1.weight" in keys:
        return _STEM_MAPS["torchvision"]  # timm's plain resnet50 keeps torchvision's names
    if source == "openmmlab" and "stem.0.conv.weight" in keys:
        return _STEM_MAPS["mmpretrain"]
    if source == "openmmlab" and "conv1.weight" in keys:
        return _STEM_MAPS["torchvision"]  # ResNetV1b
    return _STEM_MAPS[source]


def _layout(source: str, mapped: Mapping[str, Tensor]) -> BackboneLayout:
    """Stem type and width, shortcut type and depth, read off the renamed tensors."""
    if "backbone.stem.3.weight" in mapped:
        widths = [int(mapped[f"backbone.stem.{i}.weight"].shape[0]) for i in (0, 3, 6)]
        if widths != [widths[0], widths[0], 2 * widths[0]]:
            raise InputError(
                f"a deep stem of widths {widths} (e.g. timm's 'tiered' stems) has no equivalent here: "
                "supported deep stems are (w, w, 2w)"
            )
        stem, width = "deep", widths[0]
    else:
        stem, width = "classic", int(mapped["backbone.stem.0.weight"].shape[0])
    avg_down = any(re.match(r"backbone\.layer\d\.\d+\.downsample\.2\.", k) for k in mapped)
    blocks = {int(m.group(1)) for k in mapped if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    bottleneck = "backbone.layer1.0.conv3.weight" in mapped
    return BackboneLayout(source, stem, width, avg_down, _DEPTHS.get((bottleneck, len(blocks))))


def _shift_avgdown_shortcuts(mapped: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmpretrain's ResNetV1d has no pool where the stride is 1, so its conv sits at ``downsample.0``.

    Ours (like timm's and MMSegmentation's) keeps an identity there, with the conv at ``.1``.
    """
    convs = [k for k in mapped if k.endswith("downsample.0.weight") and mapped[k].dim() == 4]
    for key in convs:
        block = key[: -len("0.weight")]
        moved = {k: v for k, v in mapped.items() if k.startswith(block)}
        for k in moved:
            del mapped[k]
        for k, v in moved.items():
            index, rest = k[len(block) :].split(".", 1)
            mapped[f"{block}{int(index) + 1}.{rest}"] = v
    return mapped


def imagenet_to_backbone(
    state: Mapping[str, Tensor], source: str = "auto"
) -> tuple[dict[str, Tensor], list[str], BackboneLayout]:
    """Rename an ImageNet ResNet state dict to ``backbone.*`` keys.

    Returns (mapped tensors, dropped classifier keys, the layout the file describes). A key that is
    neither backbone nor classifier raises: nothing is dropped silently.
    """
    state = _strip_backbone_prefix(state)
    if source == "auto":
        source = detect_backbone_source(state)
    if source not in BACKBONE_SOURCES:
        raise InputError(
            f"unknown backbone source {source!r}; supported: auto, {', '.join(BACKBONE_SOURCES)}"
        )
    stem_map = _stem_map(source, set(state))
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        prefix = next((p for p in stem_map if key.startswith(p)), None)
        if _LAYER_KEY.fullmatch(key):
            mapped[f"backbone.{key}"] = value
        elif prefix is not None:
            mapped[f"backbone.stem.{stem_map[prefix]}{key[len(prefix) :]}"] = value
        elif key.startswith(_CLASSIFIER):
            dropped.append(key)  # the ImageNet classifier has no place in a segmentation model
        else:
            unknown.append(key)
    if any(k.startswith(("decode_head.", "auxiliary_head.", "cls.", "ppm.")) for k in unknown):
        raise InputError(
            "a whole segmentation checkpoint, not an ImageNet backbone: convert it with 'pspnet convert' "
            "or start from it with model.init_weights"
        )
    if unknown or "backbone.stem.0.weight" not in mapped:
        raise InputError(
            f"not {_a(_DESCRIPTIONS[source][0])} checkpoint: {len(unknown)} keys of no ResNet backbone, "
            f"e.g. {unknown[:5]}" + ("" if unknown else " (no stem convolution found)")
        )
    layout = _layout(source, mapped)
    if layout.avg_down and source == "openmmlab":
        mapped = _shift_avgdown_shortcuts(mapped)
    return mapped, dropped, layout


def backbone_state_dict(state: Mapping[str, Tensor], stem: str) -> tuple[dict[str, Tensor], list[str]]:
    """Rename the authors' (``stem="deep"``) or torchvision's (``"classic"``) keys; (mapped, dropped)."""
    if stem not in BACKBONE_STEMS:
        raise InputError(f"unknown stem {stem!r}; supported: {sorted(BACKBONE_STEMS)}")
    mapped, dropped, _ = imagenet_to_backbone(state, "semseg" if stem == "deep" else "torchvision")
    return mapped, dropped


def _check_fits(path: str | os.PathLike[str], model: PSPNet, layout: BackboneLayout) -> None:
    """Refuse a model built differently from the checkpoint, naming the options that fix it."""
    cfg = model.config
    wanted = {"stem": layout.stem, "stem_width": layout.stem_width, "avg_down": layout.avg_down}
    if layout.depth is not None:
        wanted["depth"] = layout.depth
    changes = {k: v for k, v in wanted.items() if getattr(cfg, k) != v}
    if not changes:
        return
    current = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in wanted)
    preset = _preset_of_depth(model.preset_name, cfg.depth, changes.get("depth"))
    if preset != model.preset_name:
        changes.pop("depth")  # the preset of that depth says it
    args = "".join(f", {k}={v!r}" for k, v in changes.items())
    yaml = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())
    config = [f"model.preset: {preset}"] if preset != model.preset_name else []
    config += [f"model.overrides {{{yaml}}}"] if changes else []
    raise InputError(
        f"{path}: {_a(layout.describe())} checkpoint does not fit the model's {cfg.stem}-stem "
        f"ResNet-{cfg.depth} backbone ({current}); build the model with "
        f"create_model({preset!r}{args}) (training config: {', '.join(config)})"
    )


def _preset_of_depth(preset: str, depth: int, wanted: int | None) -> str:
    """``pspnet50_ade20k`` for ``pspnet101_ade20k`` and depth 50 when that preset exists, else ``preset``."""
    from pspnet.models.registry import get_preset

    if wanted is None or str(depth) not in preset:
        return preset
    candidate = preset.replace(str(depth), str(wanted), 1)
    try:
        get_preset(candidate)
    except ValueError:
        return preset
    return candidate


def load_backbone_weights(
    model: PSPNet, path: str | os.PathLike[str], source: str = "auto"
) -> BackboneReport:
    """Load ImageNet ResNet weights into ``model.backbone``; PPM and heads stay freshly initialised.

    Args:
        model: the PSPNet to initialise; it must be built like the checkpoint's network (stem type
            and width, shortcut type, depth): a mismatch raises with the exact overrides to pass.
        path: ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``.
        source: ``"auto"`` (by key names) or one of :data:`BACKBONE_SOURCES`.

    Returns:
        A report listing the loaded tensors, the head tensors left as initialised and the dropped
        classifier. Every backbone tensor must be found with the right shape, else InputError.
    """
    try:
        state, skipped = _read_backbone_file(path)
        mapped, dropped, layout = imagenet_to_backbone(state, source)
    except InputError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise InputError(f"{path}: {exc}") from None
    _check_fits(path, model, layout)
    loaded = load_state_dict_into(model, mapped, allow_partial=True)
    report = BackboneReport(
        loaded.loaded,
        loaded.missing,
        loaded.unexpected,
        loaded.mismatched,
        layout.source,
        dropped,
        list(skipped),
    )
    # BN batch counters: some releases (timm) strip them; they do not change the function
    backbone_missing = [
        k for k in report.missing if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    ]
    if backbone_missing or report.unexpected or report.mismatched:
        raise InputError(
            f"{path}: does not fit the {model.config.stem}-stem ResNet-{model.config.depth} backbone "
            f"({_a(layout.describe())} file): {LoadReport.summary(report)}"
        )
    return report
