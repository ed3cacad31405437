"""MMSegmentation PSPNet checkpoints (``pspnet_r50-d8_*.pth``) -> our model.

MMSegmentation's PSPNet is the same network with three differences, all of which our config can
express, so the conversion is exact (no retraining, same logits):

- Backbone ``ResNetV1c``: a deep stem of width 32-32-64 (``stem_channels=64``; ours are
  ``w, w, 2w``, so ``stem_width=32``), stride on the 3x3 conv (``style='pytorch'``), and
  ``contract_dilation=True`` (the first block of a dilated stage uses half the dilation). The
  ``r50b`` configs use ``ResNetV1b`` instead: torchvision's 7x7 stem (``stem="classic"``).
- Every bilinear resize uses ``align_corners=False`` (the authors use True).
- The PPM branch width and the 3x3 "bottleneck" width are one setting (``channels=512``).

Key names (``mmseg/models/decode_heads/psp_head.py``, ``fcn_head.py``, ``backbones/resnet.py``,
mmcv ``ConvModule`` = ``conv`` + ``bn`` + ``activate``, no conv bias before a norm), theirs -> ours:

- ``backbone.stem.{0,1,3,4,6,7}.*`` -> same indices (V1b: ``backbone.conv1/bn1`` -> ``stem.0/1``)
- ``backbone.layerN.i.{conv,bn}K`` and ``.downsample.{0,1}`` -> same names
- ``decode_head.psp_modules.i.1.conv`` / ``.1.bn`` -> ``ppm.branches.i.1`` / ``ppm.branches.i.2``
- ``decode_head.bottleneck.conv`` / ``.bn`` -> ``classifier.0`` / ``classifier.1``
- ``decode_head.conv_seg`` -> ``classifier.4``
- ``auxiliary_head.convs.0.conv`` / ``.bn`` -> ``aux_classifier.0`` / ``aux_classifier.1``
- ``auxiliary_head.conv_seg`` -> ``aux_classifier.4``

Both concatenate ``[x, bin_1, ..., bin_n]`` in the order of the pool scales, so no channel
reordering is needed. Strides, dilations, ``align_corners`` and the input normalisation have no
tensors: they are read from the config text MMSegmentation stores in the checkpoint's ``meta``
when it is there, else from the file name (``-d8``), else MMSegmentation's defaults (with a note).

Not converted (refused with the reason): other decode heads (DeepLabV3, UPerNet, FCN...), and
ResNet-18/34 checkpoints, whose mmseg BasicBlock leaves its second conv undilated while ours
dilates both, so the converted network would compute something else.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pspnet.data.info import DatasetInfo, default_palette
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import InputError
from pspnet.io.convert import ImportedWeights, read_checkpoint, unwrap_state_dict
from pspnet.models.pspnet import PSPNet, PSPNetConfig

__all__ = [
    "MMSEG_RULES",
    "MMSegSettings",
    "infer_mmseg_config",
    "mmseg_settings",
    "mmseg_to_pspnet",
    "read_mmseg",
]

# (MMSegmentation key pattern, our key); matched in full, first match wins
MMSEG_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), ours)
    for pattern, ours in (
        (r"backbone\.stem\.([013467])\.(\w+)", r"backbone.stem.\1.\2"),
        (r"backbone\.conv1\.weight", "backbone.stem.0.weight"),
        (r"backbone\.bn1\.(\w+)", r"backbone.stem.1.\1"),
        (
            r"backbone\.(layer[1-4]\.\d+\.(?:conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.[0-2]\.\w+))",
            r"backbone.\1",
        ),
        (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight", r"ppm.branches.\1.1.weight"),
        (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(\w+)", r"ppm.branches.\1.2.\2"),
        (r"decode_head\.bottleneck\.conv\.weight", "classifier.0.weight"),
        (r"decode_head\.bottleneck\.bn\.(\w+)", r"classifier.1.\1"),
        (r"decode_head\.conv_seg\.(weight|bias)", r"classifier.4.\1"),
        (r"auxiliary_head\.convs\.0\.conv\.weight", "aux_classifier.0.weight"),
        (r"auxiliary_head\.convs\.0\.bn\.(\w+)", r"aux_classifier.1.\1"),
        (r"auxiliary_head\.conv_seg\.(weight|bias)", r"aux_classifier.4.\1"),
    )
)

# decode-head module name -> the head it betrays, for the refusal of non-PSPNet checkpoints.
# UPerHead also has ``psp_modules`` (its PPM on the last stage), hence markers before acceptance.
_OTHER_HEADS = {
    "aspp_modules": "ASPPHead (DeepLabV3)",
    "lateral_convs": "UPerHead (UPerNet)",
    "fpn_convs": "UPerHead (UPerNet)",
    "convs": "FCNHead (FCN)",
    "conv_cat": "FCNHead (FCN)",
}

# (bottleneck blocks?, blocks in layer3) -> depth, as in MMSegmentation's ResNet.arch_settings
_DEPTHS = {(True, 6): 50, (True, 23): 101, (True, 36): 152, (False, 2): 18, (False, 6): 34}

# (strides, dilations) of the four stages -> our output stride (MMSegmentation's -d8/-d16/-d32)
_OUTPUT_STRIDES = {
    ((1, 2, 1, 1), (1, 1, 2, 4)): 8,
    ((1, 2, 2, 1), (1, 1, 1, 2)): 16,
    ((1, 2, 2, 2), (1, 1, 1, 1)): 32,
}


@dataclass(frozen=True)
class MMSegSettings:
    """The parameter-free settings of an MMSegmentation model: strides, resize, normalisation."""

    output_stride: int = 8
    contract_dilation: bool = True
    align_corners: bool = False
    preprocess: Preprocess = PYTORCH_PREPROCESS
    notes: tuple[str, ...] = field(default=())
    pool_scales: tuple[int, ...] | None = None
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] | None = None
    crop_size: int | None = None
    """The training crop when the saved config gives a square one (``crop_size = (512, 512)``)."""


def _config_text(meta: Any) -> str:
    """The config MMSegmentation saved with the weights: ``meta['config']`` (0.x) or ``meta['cfg']`` (1.x)."""
    if not isinstance(meta, Mapping):
        return ""
    for key in ("config", "cfg"):
        if isinstance(meta.get(key), str):
            return meta[key]
    return ""


def _setting(text: str, pattern: str) -> str | None:
    """The value of a setting written once or several times identically; None if absent or ambiguous.

    A config saved as raw text repeats overridden values (the base file, then the override), so
    disagreeing occurrences are not guessed between.
    """
    values = {re.sub(r"\s+", "", m.group(1)) for m in re.finditer(pattern, text)}
    return values.pop() if len(values) == 1 else None


def _numbers(literal: str) -> tuple[float, ...]:
    value = ast.literal_eval(literal)
    return tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def _preprocess(text: str) -> tuple[Preprocess, str | None]:
    mean = _setting(text, r"\bmean\s*=\s*(\[[^\]]*\])")
    std = _setting(text, r"\bstd\s*=\s*(\[[^\]]*\])")
    to_rgb = _setting(text, r"\b(?:bgr_)?to_rgb\s*=\s*(True|False)")
    if mean is None or std is None or to_rgb is None:
        return PYTORCH_PREPROCESS, (
            "normalisation not found in the checkpoint's config: assumed MMSegmentation's "
            "(RGB, ImageNet mean/std on 0-255)"
        )
    try:
        mean_values, std_values = _numbers(mean), _numbers(std)
        if to_rgb == "True":  # the BGR image is turned into RGB before the mean (given in RGB) is applied
            return Preprocess(mean_values, std_values, "rgb"), None  # type: ignore[arg-type]
        # the network sees BGR; the config's mean/std are in BGR order, ours are written in RGB
        return Preprocess(mean_values[::-1], std_values[::-1], "bgr"), None  # type: ignore[arg-type]
    except (ValueError, SyntaxError) as exc:
        return (
            PYTORCH_PREPROCESS,
            f"unreadable normalisation in the checkpoint's config ({exc}); assumed ImageNet RGB",
        )


def _output_stride(text: str, filename: str) -> tuple[int, str | None]:
    strides = _setting(text, r"\bstrides\s*=\s*(\([\d,\s]*\))")
    dilations = _setting(text, r"\bdilations\s*=\s*(\([\d,\s]*\))")
    if strides and dilations:
        key = (tuple(int(v) for v in _numbers(strides)), tuple(int(v) for v in _numbers(dilations)))
        if key not in _OUTPUT_STRIDES:
            raise InputError(
                f"{filename}: backbone strides {key[0]} with dilations {key[1]} have no PSPNet equivalent; "
                f"supported: {', '.join(f'{s}/{d}' for s, d in _OUTPUT_STRIDES)}"
            )
        return _OUTPUT_STRIDES[key], None
    match = re.search(r"-d(8|16|32)(?![0-9])", filename)
    if match:
        return int(match.group(1)), None
    return 8, (
        "output stride not found in the checkpoint's config nor in its file name (-d8/-d16/-d32): "
        "assumed 8, MMSegmentation's PSPNet default; pspnet.models.stride.with_output_stride changes it"
    )


def _flag(text: str, name: str, default: bool) -> tuple[bool, str | None]:
    value = _setting(text, rf"\b{name}\s*=\s*(True|False)")
    if value is None:
        return default, f"{name} not found in the checkpoint's config: assumed {default} (MMSegmentation's)"
    return value == "True", None


def mmseg_settings(meta: Any, filename: str) -> MMSegSettings:
    """Read the tensor-free settings off the checkpoint's saved config, else its name, else defaults."""
    text = _config_text(meta)
    if re.search(r"\bmulti_grid\s*=\s*\(", text):
        raise InputError(f"{filename}: multi-grid dilations (multi_grid=...) have no PSPNet equivalent")
    output_stride, stride_note = _output_stride(text, filename)
    contract, contract_note = _flag(text, "contract_dilation", True)
    align, align_note = _flag(text, "align_corners", False)
    preprocess, preprocess_note = _preprocess(text)
    notes = [n for n in (stride_note, contract_note, align_note, preprocess_note) if n]
    if not text:
        notes = [
            "no config in the checkpoint's meta: assumed MMSegmentation's PSPNet settings (output stride "
            f"{output_stride}, contract_dilation, align_corners=False, ImageNet RGB normalisation)"
        ]
    classes = _class_names(meta)
    if classes:
        notes.append(
            f"trained on {len(classes)} classes: {', '.join(classes[:5])}"
            + (", ..." if len(classes) > 5 else "")
        )
    scales = _setting(text, r"\bpool_scales\s*=\s*(\([\d,\s]*\))")
    pool_scales = tuple(int(v) for v in _numbers(scales)) if scales else None
    crop = _setting(text, r"\bcrop_size\s*=\s*(\([\d,\s]*\))")
    crop_sides = {int(v) for v in _numbers(crop)} if crop else set()
    crop_size = crop_sides.pop() if len(crop_sides) == 1 else None
    return MMSegSettings(
        output_stride,
        contract,
        align,
        preprocess,
        tuple(notes),
        pool_scales,
        tuple(classes),
        _palette(meta, len(classes)),
        crop_size,
    )


def _palette(meta: Any, count: int) -> tuple[tuple[int, int, int], ...] | None:
    """The class colours saved with the classes (0.x ``PALETTE``, 1.x ``dataset_meta['palette']``)."""
    if not isinstance(meta, Mapping):
        return None
    palette = meta.get("PALETTE")
    if palette is None and isinstance(meta.get("dataset_meta"), Mapping):
        palette = meta["dataset_meta"].get("palette")
    if not isinstance(palette, (list, tuple)) or len(palette) != count:
        return None
    colours = []
    for colour in palette:
        if not (
            isinstance(colour, (list, tuple))
            and len(colour) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        ):
            return None
        colours.append((colour[0], colour[1], colour[2]))
    return tuple(colours)


def _dataset_info(
    settings: MMSegSettings, num_classes: int, path: Path
) -> tuple[DatasetInfo | None, str | None]:
    """The label space the file names, when it can be stored whole; else (None, why not)."""
    names = settings.class_names
    if not names:
        return None, None
    if len(names) != num_classes:
        return None, f"the {len(names)} class names saved in the file do not match its {num_classes} classes"
    if settings.crop_size is None:
        return None, (
            "class names not stored: the saved config gives no square training crop, which the model's "
            "dataset info must carry; pass --preset for a known label space"
        )
    info = DatasetInfo(
        name=path.stem.split(".")[0],
        class_names=tuple(n.strip() for n in names),
        palette=settings.palette or default_palette(num_classes),
        crop_size=settings.crop_size,
    )
    return (
        info,
        f"label space stored from the file: {num_classes} class names, training crop {settings.crop_size}",
    )


def _class_names(meta: Any) -> list[str]:
    if not isinstance(meta, Mapping):
        return []
    classes = meta.get("CLASSES")
    dataset_meta = meta.get("dataset_meta")
    if classes is None and isinstance(dataset_meta, Mapping):
        classes = dataset_meta.get("classes")
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        return []  # only plain strings: objects the reader skipped (never run) are not names
    return list(classes)


def _refuse_other_heads(state: Mapping[str, Tensor], source: str) -> None:
    head_modules = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
    others = sorted({_OTHER_HEADS[m] for m in head_modules if m in _OTHER_HEADS})
    if "psp_modules" in head_modules and not others:
        return
    head = others[0] if others else "not a PSPHead"
    raise InputError(
        f"{source}: not an MMSegmentation PSPNet checkpoint: its decode head is {head} (modules "
        f"{head_modules}); only PSPHead ('decode_head.psp_modules.*') converts to PSPNet"
    )


def mmseg_to_pspnet(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename MMSegmentation keys to ours; any key no rule knows raises (nothing is silently dropped)."""
    _refuse_other_heads(state, source)
    aux_extra = sorted(
        {
            k.split(".")[1] + "." + k.split(".")[2]
            for k in state
            if re.match(r"auxiliary_head\.(convs\.[1-9]|conv_cat)", k)
        }
    )
    if aux_extra:
        raise InputError(
            f"{source}: the auxiliary FCNHead has {aux_extra}: only num_convs=1, concat_input=False "
            "(MMSegmentation's PSPNet configs) matches our auxiliary head"
        )
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, ours in MMSEG_RULES:
            match = pattern.fullmatch(key)
            if match:
                out[match.expand(ours)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(
            f"{source}: {len(unknown)} MMSegmentation keys have no place in PSPNet, e.g. {unknown[:5]}; "
            "only ResNetV1b/V1c/V1d + PSPHead + FCNHead (1 conv) checkpoints convert"
        )
    return out


def _blocks(state: Mapping[str, Tensor], layer: int) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layer{layer}\.(\d+)\.", k))}


def infer_mmseg_config(
    state: Mapping[str, Tensor], bins: tuple[int, ...], settings: MMSegSettings, source: str = "checkpoint"
) -> PSPNetConfig:
    """Read depth, widths, stem, classes, PPM and aux off MMSegmentation tensors (names and shapes)."""
    _refuse_other_heads(state, source)
    needed = ["decode_head.conv_seg.weight", "decode_head.bottleneck.conv.weight"]
    needed += [f"backbone.layer{i}.0.conv1.weight" for i in range(1, 5)]
    absent = [k for k in needed if k not in state]
    if absent:
        raise InputError(f"{source}: not an MMSegmentation PSPNet checkpoint: missing {absent}")
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = _DEPTHS.get((bottleneck, len(_blocks(state, 3))))
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise InputError(
            f"{source}: unsupported backbone: {kind} ResNet with {len(_blocks(state, 3))} blocks in layer3"
        )
    if not bottleneck:
        # mmseg BasicBlock: conv2 is built with padding=1 and no dilation; ours dilates both convs
        raise InputError(
            f"{source}: MMSegmentation ResNet-{depth} (BasicBlock) dilates only the first conv of each "
            "block, our ResNet-18/34 both: the network would compute something else, so it is not "
            "converted; ResNet-50/101/152 checkpoints convert exactly"
        )
    if "backbone.stem.0.weight" in state:
        stem, stem_width = "deep", int(state["backbone.stem.0.weight"].shape[0])
        widths = [
            int(state[f"backbone.stem.{i}.weight"].shape[0])
            for i in (0, 3, 6)
            if f"backbone.stem.{i}.weight" in state
        ]
        if widths != [stem_width, stem_width, 2 * stem_width]:
            raise InputError(f"{source}: deep stem widths {widths} are not (w, w, 2w) as in ResNetV1c")
    elif "backbone.conv1.weight" in state:
        stem, stem_width = "classic", int(state["backbone.conv1.weight"].shape[0])
    else:
        raise InputError(f"{source}: no stem found ('backbone.stem.*' or 'backbone.conv1.weight')")
    branches = {int(m.group(1)) for k in state if (m := re.match(r"decode_head\.psp_modules\.(\d+)\.", k))}
    if len(branches) != len(bins):
        raise InputError(
            f"{source}: the checkpoint has {len(branches)} pyramid branches but bins={tuple(bins)}; "
            "pass the pool_scales it was trained with (--bins)"
        )
    in_channels = int(state["decode_head.psp_modules.0.1.conv.weight"].shape[1])
    channels = int(state["decode_head.psp_modules.0.1.conv.weight"].shape[0])
    head_channels = int(state["decode_head.bottleneck.conv.weight"].shape[0])
    if channels == in_channels // len(bins) and in_channels % len(bins) == 0:
        reduction = True
    elif channels == in_channels:
        reduction = False
    else:
        raise InputError(
            f"{source}: pyramid branches of {channels} channels from {in_channels} inputs: PSPNet's are "
            f"{in_channels}/{len(bins)} (or {in_channels} without reduction), so it cannot be converted"
        )
    aux = "auxiliary_head.conv_seg.weight" in state
    return PSPNetConfig(
        num_classes=int(state["decode_head.conv_seg.weight"].shape[0]),
        depth=depth,
        output_stride=settings.output_stride,
        stem=stem,
        stem_width=stem_width,
        widths=tuple(int(state[f"backbone.layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)),  # type: ignore[arg-type]
        use_ppm=True,
        bins=tuple(bins),
        reduction=reduction,
        head_channels=head_channels,
        aux=aux,
        aux_channels=int(state["auxiliary_head.convs.0.conv.weight"].shape[0]) if aux else 256,
        align_corners=settings.align_corners,
        avg_down=any(re.match(r"backbone\.layer\d\.\d+\.downsample\.2\.", k) for k in state),
        contract_dilation=settings.contract_dilation,
    )


def _complete(state: dict[str, Tensor], config: PSPNetConfig, source: str) -> list[str]:
    """Check every tensor against the model's shapes; add absent BN counters. Returns notes."""
    with torch.device("meta"):
        expected = PSPNet(config).state_dict()
    notes = []
    counters = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    for key in counters:
        state[key] = torch.tensor(0, dtype=torch.long)  # a counter only; unused in eval and with momentum
    if counters:
        notes.append(f"{len(counters)} BatchNorm num_batches_tracked counters absent from the file: set to 0")
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    extra = [k for k in state if k not in expected]
    if missing or wrong or extra:
        problems = [f"missing {missing[:4]}" if missing else "", f"mis-shaped {wrong[:3]}" if wrong else ""]
        problems.append(f"unplaced {extra[:4]}" if extra else "")
        found = "; ".join(p for p in problems if p)
        raise InputError(f"{source}: the MMSegmentation weights do not form a PSPNet ({found})")
    return notes


def read_mmseg(path: Path, bins: tuple[int, ...]) -> ImportedWeights:
    """Reader for MMSegmentation PSPNet checkpoints (``{"meta": ..., "state_dict": ...}``)."""
    release = read_checkpoint(path)
    raw = release.content
    meta = raw.get("meta") if isinstance(raw, Mapping) else None
    state = unwrap_state_dict(raw, str(path))
    settings = mmseg_settings(meta, path.name)
    if settings.pool_scales is not None and settings.pool_scales != tuple(bins):
        raise InputError(
            f"{path}: trained with pool_scales {settings.pool_scales} (its saved config) but "
            f"bins={tuple(bins)}; pass --bins {' '.join(map(str, settings.pool_scales))}"
        )
    config = infer_mmseg_config(state, tuple(bins), settings, str(path))
    mapped = mmseg_to_pspnet(state, str(path))
    notes = list(settings.notes) + _complete(mapped, config, str(path))
    notes += [n for n in (release.note(),) if n]
    stem = f"{config.stem} stem {config.stem_width}" + (
        f"-{config.stem_width}-{2 * config.stem_width}" if config.stem == "deep" else ""
    )
    notes.insert(
        0,
        f"MMSegmentation PSPNet: ResNet-{config.depth} ({stem}), output stride {config.output_stride}, "
        f"contract_dilation={config.contract_dilation}, align_corners={config.align_corners}",
    )
    dataset, dataset_note = _dataset_info(settings, config.num_classes, path)
    dropped = []
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        dropped = [str(k) for k in raw if k not in ("state_dict", "meta")]
    return ImportedWeights(
        config,
        mapped,
        settings.preprocess,
        dropped,
        notes,
        class_names=tuple(n.strip() for n in settings.class_names),
        dataset=dataset,
        dataset_note=dataset_note,
    )
