"""Import released weights into our model.

Sources:
- ``semseg``: the authors' PyTorch release (hszhao/semseg ``train_epoch_*.pth``): a dict with
  ``state_dict`` (keys prefixed ``module.`` because it was saved from DataParallel/DDP), ``epoch``
  and ``optimizer``. Our module names were chosen so that the mapping is a prefix rename.

Files are read with ``torch.load(weights_only=True)`` only (:func:`read_torch_file`): a checkpoint
that would need arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import PYTORCH_PREPROCESS
from pspnet.errors import InputError
from pspnet.io.checkpoint import LoadReport, load_state_dict_into, read_torch_file, save_model
from pspnet.models.pspnet import PSPNet, PSPNetConfig
from pspnet.models.registry import attach_metadata, get_preset

__all__ = [
    "SEMSEG_PREFIXES",
    "ConversionResult",
    "convert_checkpoint",
    "infer_semseg_config",
    "semseg_to_pspnet",
    "unwrap_state_dict",
]

# authors' prefix -> ours; order matters only for readability (prefixes are disjoint)
SEMSEG_PREFIXES: tuple[tuple[str, str], ...] = (
    ("layer0.", "backbone.stem."),
    ("layer1.", "backbone.layer1."),
    ("layer2.", "backbone.layer2."),
    ("layer3.", "backbone.layer3."),
    ("layer4.", "backbone.layer4."),
    ("ppm.features.", "ppm.branches."),
    ("cls.", "classifier."),
    ("aux.", "aux_classifier."),
)

_DEPTH_BY_LAYER3_BLOCKS = {6: 50, 23: 101, 36: 152}


@dataclass
class ConversionResult:
    model: PSPNet
    report: LoadReport
    path: Path | None = None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the tensor mapping in a loaded checkpoint and strip DataParallel's ``module.`` prefix."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(
            f"{source}: no state dict found (expected a dict of tensors or {{'state_dict': ...}})"
        )
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise InputError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def semseg_to_pspnet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the authors' keys to ours. Keys matching no known prefix raise (nothing is dropped)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for theirs, ours in SEMSEG_PREFIXES:
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(
            f"not an hszhao/semseg PSPNet state dict: {len(unknown)} unknown keys, e.g. {unknown[:5]}"
        )
    return out


def infer_semseg_config(state: Mapping[str, Tensor], bins: tuple[int, ...] = (1, 2, 3, 6)) -> PSPNetConfig:
    """Read depth, class count, PPM and aux presence off the tensors' names and shapes.

    Pool sizes have no parameters, so ``bins`` cannot be read from the file: the number of branches
    is checked against it instead.
    """
    if "cls.4.weight" not in state:
        raise InputError("not an hszhao/semseg PSPNet state dict: no 'cls.4.weight' (the classifier)")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    depth = _DEPTH_BY_LAYER3_BLOCKS.get(len(blocks))
    if depth is None:
        raise InputError(
            f"unsupported backbone: layer3 has {len(blocks)} blocks (ResNet-50/101/152 have 6/23/36)"
        )
    branches = {int(m.group(1)) for k in state if (m := re.match(r"ppm\.features\.(\d+)\.", k))}
    use_ppm = bool(branches)
    if use_ppm and len(branches) != len(bins):
        raise InputError(
            f"the checkpoint has {len(branches)} pyramid branches but bins={bins}; pass matching bins"
        )
    return PSPNetConfig(
        num_classes=int(state["cls.4.weight"].shape[0]),
        depth=depth,
        use_ppm=use_ppm,
        bins=tuple(bins),
        aux="aux.4.weight" in state,
    )


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    source: str = "semseg",
    preset: str | None = None,
    bins: tuple[int, ...] = (1, 2, 3, 6),
) -> ConversionResult:
    """Convert a released checkpoint into a pspnet model (and a safetensors file if ``dst``).

    Args:
        src: the checkpoint file.
        dst: where to write the converted ``.safetensors`` (skipped when None).
        source: ``"semseg"`` (authors' PyTorch release).
        preset: optional preset whose label space and preprocessing the weights belong to
            (e.g. ``"pspnet50_ade20k"``); its architecture must match the file.
        bins: pyramid bins the checkpoint was trained with.
    """
    if source != "semseg":
        raise InputError(f"unknown source {source!r}; supported: 'semseg'")
    state = unwrap_state_dict(read_torch_file(src), str(src))
    config = infer_semseg_config(state, bins)
    dataset: DatasetInfo | None = None
    preprocess = PYTORCH_PREPROCESS
    name = f"pspnet{config.depth}" if config.use_ppm else f"fcn{config.depth}"
    if preset is not None:
        chosen = get_preset(preset)
        expected = chosen.config.replace(aux=config.aux)
        if expected != config:
            diffs = {
                f: (getattr(config, f), getattr(expected, f))
                for f in config.to_dict()
                if getattr(config, f) != getattr(expected, f)
            }
            raise InputError(f"{src}: weights do not fit preset {preset!r}: (file, preset) differ in {diffs}")
        dataset, preprocess, name = chosen.dataset, chosen.preprocess, chosen.name
    model = attach_metadata(PSPNet(config), name, dataset, preprocess)
    report = load_state_dict_into(model, semseg_to_pspnet(state))
    model.eval()
    path = save_model(model, dst, extra={"converted_from": Path(src).name, "source": source}) if dst else None
    return ConversionResult(model, report, path)
