"""Everything a training run sets up before its first step: device, precision, seeds, data, model.

Each function refuses a bad setting with an :class:`~pspnet.errors.InputError` that names the key
and the fix, so that a run never fails hours in for a reason knowable at the start.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pspnet.config import TrainConfig
from pspnet.errors import DataError, InputError

__all__ = [
    "build_model",
    "check_config",
    "check_mask_palette",
    "named_label_space",
    "open_train_datasets",
    "resolve_amp",
    "resolve_device",
    "resolve_val_list",
    "seed_everything",
    "set_train_mode",
    "verify_or_refuse",
]


def check_config(config: TrainConfig) -> None:
    """The checks of a training start that need neither data nor a model: the preset, label space
    and mask palette names, and whether this machine has the device and precision asked for.

    Training runs them first, and ``pspnet train --print-config`` runs them too, so that a config
    can be checked (with the same messages) before its job waits in a queue.

    Raises:
        InputError: naming the key, the value and the allowed ones.
    """
    from pspnet.models.registry import get_preset

    try:
        get_preset(config.model.preset)
    except ValueError as exc:
        raise InputError(f"model.preset: {exc}") from None
    d = config.data
    named_label_space(d.dataset)
    if d.mask_palette is not None:
        check_mask_palette(d.mask_palette)
    device = resolve_device(config.device, 0)
    if device.type != "cuda":  # on CUDA every amp mode is valid (and the check would start CUDA)
        resolve_amp(config.optim.amp, device)


def named_label_space(name: str | None) -> Any:
    """The ``DatasetInfo`` that ``data.dataset`` names (None: the data's own classes).

    Raises:
        InputError: an unknown name, with the known ones.
    """
    from pspnet.data.info import get_dataset_info

    if name is None:
        return None
    try:
        return get_dataset_info(name)
    except ValueError as exc:
        raise InputError(f"data.dataset: {exc} (or null for the data's own classes)") from None


def check_mask_palette(name: str) -> None:
    """Refuse a ``data.mask_palette`` that names no dataset, or one whose palette gives two ids the
    same colour (ADE20K's: its colour masks cannot be read back)."""
    from pspnet.data.info import colour_mask_palette

    try:
        colour_mask_palette(name)
    except ValueError as exc:
        raise InputError(f"data.mask_palette={name}: {exc}") from None


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda requested but no CUDA device is available; use device: auto or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. Never autocast on CPU (slow and not what users expect)."""
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise InputError(f"optim.amp: {mode} needs a CUDA device; use amp: auto (fp32 on CPU) or off")
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def open_train_datasets(config: TrainConfig, preprocess: Any) -> tuple[Any, Any | None]:
    """Training and validation datasets from ``config.data``, with the authors' augmentation.

    The validation set is never the training images under another name: a list dataset's
    ``val_split`` must name another list file, and a flat folder (no ``images/<val_split>/``)
    is refused unless ``val_split`` is null.
    """
    from pspnet.data.datasets import detect_kind, open_dataset
    from pspnet.data.transforms import train_transforms

    d = config.data
    if d.root is None:
        raise InputError("data.root is not set; pass --set data.root=/path/to/dataset")
    info = named_label_space(d.dataset)
    num_classes = config.model.num_classes if info is None and d.kind in ("folder", "list", "auto") else None
    kind = detect_kind(d.root) if d.kind == "auto" else d.kind
    validate = d.val_split is not None and config.eval.enabled

    def open_split(root: str | Path, split: str) -> Any:
        try:
            return open_dataset(
                root,
                kind,
                split,
                info=info,
                seed=config.seed,
                num_classes=num_classes,
                data_root=d.data_root,
                mask_palette=d.mask_palette,
                ignore_index=d.ignore_index,
            )
        except InputError as exc:
            if num_classes is not None and "num_classes" in str(exc):
                raise InputError(
                    f"model.num_classes={num_classes} does not match the dataset: {exc}"
                ) from exc
            for key, value in (("mask_palette", d.mask_palette), ("ignore_index", d.ignore_index)):
                if value is not None and key in str(exc) and type(exc) is InputError:
                    raise InputError(f"data.{key}={value}: {exc}") from exc  # name the config key
            raise

    if validate and kind == "folder":
        _refuse_flat_folder_validation(Path(d.root), d.val_split)
    # A list file is its own split: data.root is the training list (train_split does not apply).
    train_set = open_split(d.root, "train" if kind == "list" else d.train_split)
    train_set.transform = train_transforms(
        d.crop_size,
        preprocess,
        scale=tuple(d.scale) if d.scale is not None else None,
        rotate=tuple(d.rotate) if d.rotate is not None else None,
        blur=d.blur,
        flip=d.flip,
        ignore_index=train_set.info.ignore_index,  # crop and rotation padding: never scored
    )
    val_set = None
    if validate:
        if kind == "list":
            val_set = open_split(resolve_val_list(Path(d.root), d.val_split), "train")
        else:
            val_set = open_split(d.root, d.val_split)
    return train_set, val_set


def resolve_val_list(train_list: Path, val_split: str) -> Path:
    """The validation list file that ``data.val_split`` names for list data: an existing path
    (as given, or relative to the training list's folder), or a bare name ``val`` meaning
    ``<training list folder>/val.txt``.

    Raises:
        InputError: no such file, or it is the training list itself.
    """
    given = Path(val_split)
    candidates = [given, train_list.parent / given]
    if given.suffix == "" and len(given.parts) == 1:
        candidates.append(train_list.parent / f"{val_split}.txt")
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        tried = ", ".join(dict.fromkeys(str(p) for p in candidates))
        raise InputError(
            f"data.val_split={val_split!r}: no validation list file ({tried} not found) for the list "
            f"dataset {train_list}; set data.val_split to the val list path or null"
        )
    if found.resolve() == train_list.resolve():
        raise InputError(
            f"data.val_split={val_split!r} is the training list {train_list} itself: validation would "
            "score the training images; set data.val_split to the val list path or null"
        )
    return found


def _refuse_flat_folder_validation(root: Path, val_split: str) -> None:
    """A flat folder (``images/`` without split folders) serves every split from the same files."""
    if (root / "images").is_dir() and not (root / "images" / val_split).is_dir():
        raise InputError(
            f"data.val_split={val_split!r}: {root / 'images'} has no {val_split}/ folder (a flat folder "
            "serves every split from the same images: validation would score the training images); set "
            f"data.val_split=null, or split the data into images/{{train,{val_split}}}/ and "
            f"masks/{{train,{val_split}}}/"
        )


def verify_or_refuse(dataset: Any, max_files: int | None, rank: int, what: str = "training") -> None:
    """Refuse, before any training, a dataset that ``pspnet verify-dataset`` would fail (the
    validation split too: a bad val mask found after the last iteration would end the run there)."""
    from pspnet.data.verify import verify_dataset

    report = verify_dataset(dataset, max_files=max_files, progress=False)
    if not report.ok:
        first = "; ".join(f"{path}: {message}" for path, message in report.problems[:3])
        more = f" (+{len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise DataError(
            f"{what} dataset {getattr(dataset, 'root', '')} failed verification: {first}{more}; "
            "run `pspnet verify-dataset` for the full report, fix the files, or set data.verify=false"
        )


def build_model(config: TrainConfig, info: Any, is_main: bool) -> nn.Module:
    from pspnet.models.registry import attach_metadata, create_model

    m = config.model
    num_classes = m.num_classes if m.num_classes is not None else info.num_classes
    if num_classes != info.num_classes:
        raise InputError(
            f"model.num_classes={num_classes} but dataset {info.name!r} has {info.num_classes} classes; "
            f"set model.num_classes={info.num_classes} (or null)"
        )
    try:
        model = create_model(m.preset, num_classes=num_classes, **m.overrides)
    except ValueError as exc:
        raise InputError(f"model: {exc}") from exc
    attach_metadata(model, model.preset_name, info, model.preprocess)
    if m.backbone_weights:
        from pspnet.io.backbone import load_backbone_weights

        report = load_backbone_weights(model, m.backbone_weights)
        if is_main:
            print(f"backbone weights {m.backbone_weights}: {report.summary()}", file=sys.stderr)
    if m.init_weights:
        from pspnet.io.convert import load_init_weights

        report = load_init_weights(model, m.init_weights)
        if is_main:
            print(f"init weights {m.init_weights}: {report.summary()}", file=sys.stderr)
    if is_main and not (m.backbone_weights or m.init_weights) and model.config.depth >= 50:
        print(_random_start_note(model.config.depth), file=sys.stderr)
    return model


def _random_start_note(depth: int) -> str:
    """Why a paper-size run may land far below the paper: the authors never train from scratch."""
    return (
        f"note: the ResNet-{depth} backbone starts from random weights; the authors' recipe (and the "
        f"paper's numbers) start from ImageNet weights: set model.backbone_weights (e.g. their "
        f"initmodel/resnet{depth}_v2.pth) or model.init_weights"
    )
