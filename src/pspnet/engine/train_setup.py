"""Everything a training run sets up before its first step: device, precision, seeds, data, model.

Each function refuses a bad setting with an :class:`~pspnet.errors.InputError` that names the key
and the fix, so that a run never fails hours in for a reason knowable at the start.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pspnet.config import TrainConfig
from pspnet.errors import DataError, InputError

__all__ = [
    "build_model",
    "open_train_datasets",
    "resolve_amp",
    "resolve_device",
    "seed_everything",
    "set_train_mode",
    "verify_or_refuse",
]


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
    """Training and validation datasets from ``config.data``, with the authors' augmentation."""
    from pspnet.data.datasets import open_dataset
    from pspnet.data.info import get_dataset_info
    from pspnet.data.transforms import train_transforms

    d = config.data
    if d.root is None:
        raise InputError("data.root is not set; pass --set data.root=/path/to/dataset")
    info = None
    if d.dataset is not None:
        try:
            info = get_dataset_info(d.dataset)
        except ValueError as exc:
            raise InputError(f"data.dataset: {exc}") from exc
    num_classes = config.model.num_classes if info is None and d.kind in ("folder", "list", "auto") else None
    transform = train_transforms(
        d.crop_size,
        preprocess,
        scale=tuple(d.scale) if d.scale is not None else None,
        rotate=tuple(d.rotate) if d.rotate is not None else None,
        blur=d.blur,
        flip=d.flip,
        ignore_index=d.ignore_index,
    )

    def open_split(split: str, transform: Any) -> Any:
        try:
            return open_dataset(
                d.root,
                d.kind,
                split,
                info=info,
                transform=transform,
                seed=config.seed,
                num_classes=num_classes,
            )
        except InputError as exc:
            if num_classes is not None and "num_classes" in str(exc):
                raise InputError(
                    f"model.num_classes={num_classes} does not match the dataset: {exc}"
                ) from exc
            raise

    train_set = open_split(d.train_split, transform)
    val_set = None
    if d.val_split is not None and config.eval.enabled:
        val_set = open_split(d.val_split, None)
    return train_set, val_set


def verify_or_refuse(dataset: Any, max_files: int | None, rank: int) -> None:
    """Refuse, before any training, a dataset that ``pspnet verify-dataset`` would fail."""
    from pspnet.data.verify import verify_dataset

    report = verify_dataset(dataset, max_files=max_files, progress=False)
    if not report.ok:
        first = "; ".join(f"{path}: {message}" for path, message in report.problems[:3])
        more = f" (+{len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise DataError(
            f"dataset {getattr(dataset, 'root', '')} failed verification: {first}{more}; "
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
    return model
