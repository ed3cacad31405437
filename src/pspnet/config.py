"""Typed training configuration: nested dataclasses, YAML files and ``--set a.b=value`` overrides.

Why typed and strict: a misspelt key in a YAML file (``optim.base_lt``) silently keeping its default
is how a week of GPU time gets wasted. Every key is checked against the dataclass fields and every
value against the field's type before anything runs; mistakes raise :class:`InputError` naming the
key path, the value and what is allowed.

Shipped configs (``pspnet/configs/*.yaml``) reproduce the authors' settings (hszhao/semseg
``config/*/*.yaml``); ``load_config("ade20k_pspnet50")`` reads one by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from pspnet.errors import InputError

__all__ = [
    "DataSection",
    "EvalSection",
    "ModelSection",
    "OptimSection",
    "OutputSection",
    "TrainConfig",
    "apply_override",
    "config_from_dict",
    "describe_config_source",
    "list_shipped_configs",
    "load_config",
    "resolve_config_path",
]

AmpMode = Literal["auto", "off", "bf16", "fp16"]
DatasetKind = Literal["auto", "voc2012", "cityscapes", "ade20k", "folder", "list"]
"""``pspnet.data.datasets.DATASET_KINDS`` (a test keeps the two equal; this module stays light)."""
DeviceName = Literal["auto", "cpu", "cuda"]
NonFinitePolicy = Literal["skip", "abort"]


@dataclass
class ModelSection:
    """Which network to train.

    Args:
        preset: a name from ``pspnet models`` (``pspnet50``, ``pspnet101``, ``pspnet_tiny``, ...).
        num_classes: output classes; None = the dataset's class count. Must equal the dataset's.
        overrides: :class:`~pspnet.models.pspnet.PSPNetConfig` fields, e.g. ``{bins: [1, 2, 3, 6]}``.
        init_weights: whole-model weights to start from: ours (``.safetensors``) or a released
            PSPNet checkpoint (authors' ``.pth``, MMSegmentation ``.pth``, ``.caffemodel``; converted
            on the fly). Tensors that do not match (a new class count) stay initialised.
        backbone_weights: an ImageNet ResNet checkpoint for the backbone (the paper's start: the
            authors' ``resnet50_v2.pth``, or torchvision/timm/OpenMMLab ResNets); PPM and heads
            stay freshly initialised. Applied before ``init_weights``.
        freeze_bn: keep every BatchNorm in eval mode (running statistics, no updates of them);
            for fine-tuning with tiny per-device batches.
    """

    preset: str = "pspnet50"
    num_classes: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    backbone_weights: str | None = None
    freeze_bn: bool = False


@dataclass
class DataSection:
    """Where the data lives and how it is augmented (the authors' pipeline by default).

    Args:
        root: dataset folder (or list file for ``kind: list``).
        kind: ``auto``, ``voc2012``, ``cityscapes``, ``ade20k``, ``folder`` or ``list``.
        dataset: name of a known label space (``voc2012``, ``cityscapes``, ``ade20k``,
            ``context_demo``) for folder/list data; None = the layout's own.
        train_split, val_split: split names; ``val_split: null`` disables validation. For
            ``kind: list`` data, ``val_split`` names the validation list file: a path (relative
            to the working directory or to the training list's folder) or a bare name such as
            ``val`` for ``<training list folder>/val.txt``. A flat folder dataset (no
            ``images/<val_split>/``) has no validation split: set ``val_split: null``.
        data_root: base of the relative paths in list files (default: each list file's folder),
            e.g. the dataset root for the authors' ``list/training.txt`` files.
        crop_size: square training crop (473 ADE20K/VOC, 713 Cityscapes).
        scale: random scale range, null = no scaling; rotate: degrees, null = no rotation.
        blur, flip: the 50% Gaussian blur and horizontal flip.
        num_workers: DataLoader worker processes per rank.
        ignore_index: label value ignored by the loss, the crop padding and the metrics; null =
            the dataset's own (255; a folder's ``dataset.json`` may say otherwise). Folder and list
            data may use another value; the public layouts map void to 255 and require 255.
        mask_palette: null, or the name of a dataset (``voc2012``, ``cityscapes``,
            ``context_demo``) whose palette maps RGB colour masks to class ids (folder, list and
            voc2012 layouts). Not ``ade20k``: its palette gives two ids one colour.
        verify: read every file before training (quick mode: ``verify_max_files``) and refuse a
            dataset with problems.
        verify_max_files: check only this many pairs (None = all).
    """

    root: str | None = None
    kind: DatasetKind = "auto"
    dataset: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: int = 473
    scale: list[float] | None = field(default_factory=lambda: [0.5, 2.0])
    rotate: list[float] | None = field(default_factory=lambda: [-10.0, 10.0])
    blur: bool = True
    flip: bool = True
    data_root: str | None = None
    num_workers: int = 4
    ignore_index: int | None = None
    mask_palette: str | None = None
    verify: bool = True
    verify_max_files: int | None = 200


@dataclass
class OptimSection:
    """The paper's recipe: SGD, poly schedule, 10x lr on the new layers, aux loss 0.4.

    Args:
        batch_size: global batch per optimizer step (all ranks, all accumulation steps);
            the per-step micro-batch is ``batch_size / (world_size * accumulate)``.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        iterations / epochs: training length; exactly one is set (epochs = full passes over
            the training set, converted to iterations with drop-last batches).
        amp: ``auto`` = bf16 on CUDA when supported, else fp16 with a GradScaler, never on CPU;
            ``off`` = fp32; ``bf16`` / ``fp16`` force a type (CUDA only).
        channels_last: NHWC memory format (faster convolutions on tensor cores).
        sync_bn: SyncBatchNorm across ranks on CUDA DDP (the authors' setting).
        compile: ``torch.compile`` the model for training (opt-in: the first iterations compile
            for a minute or two; docs/performance.md has the measured gain). Checkpoints keep
            the plain key names, and a run may be resumed with it on or off.
    """

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    head_lr_mult: float = 10.0
    aux_weight: float = 0.4
    batch_size: int = 16
    accumulate: int = 1
    iterations: int | None = None
    epochs: int | None = None
    amp: AmpMode = "auto"
    channels_last: bool = False
    sync_bn: bool = True
    compile: bool = False


@dataclass
class EvalSection:
    """Validation during training.

    Args:
        interval: iterations between validations; 0 = only after the last iteration.
        enabled: False = never validate.
        mode, scales, flip: the inference protocol (``whole`` or ``slide``).
        limit: validate on the first N images only (None = all).
    """

    interval: int = 0
    enabled: bool = True
    mode: Literal["whole", "slide"] = "whole"
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    limit: int | None = None


@dataclass
class OutputSection:
    """Where results go and how often.

    Args:
        dir: output folder (checkpoints/, last, best.safetensors, model.safetensors, metrics.jsonl).
        checkpoint_interval: iterations between checkpoints (0 = only the final one).
        keep_last: checkpoints kept on disk (older ones are deleted).
        tensorboard: also write TensorBoard scalars and, at each validation, prediction images
            (needs ``pip install tensorboard``).
        tensorboard_images: validation images shown in TensorBoard at each validation, each as
            image | ground truth | prediction (0 = none).
        log_interval: iterations between metrics.jsonl lines and progress-bar updates.
        progress: show the tqdm bar.
    """

    dir: str = "runs/pspnet"
    checkpoint_interval: int = 1000
    keep_last: int = 3
    tensorboard: bool = False
    tensorboard_images: int = 4
    log_interval: int = 20
    progress: bool = True


@dataclass
class TrainConfig:
    """Everything ``pspnet train`` needs. ``to_dict()`` is saved next to every checkpoint.

    Args:
        seed: seeds Python, NumPy and torch, the shuffling and the augmentation stream.
        deterministic: deterministic algorithms (bit-identical reruns and resumes on CPU).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        nonfinite: what a NaN/inf loss does: ``skip`` the step (logged) or ``abort``. NaN/inf
            weights, or ``MAX_SKIPS_IN_A_ROW`` (20) non-finite steps in a row (a diverged run),
            stop the run either way.
        resume: continue from ``OUT/last``; without it, an output folder holding a run is refused.
        dist_timeout_s: how long a rank waits for the others before giving up (DDP).
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: OutputSection = field(default_factory=OutputSection)
    seed: int = 0
    deterministic: bool = False
    device: DeviceName = "auto"
    nonfinite: NonFinitePolicy = "skip"
    resume: bool = False
    dist_timeout_s: float = 1800.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the trained weights; a resume must not change them.

        Left out on purpose: output, evaluation, worker count, verification, progress: they change
        where results go or how fast they come, not the numbers. ``optim.base_lr`` is in, but a
        resume may change it (the engine says so): the way out of a diverged run.
        """
        data = dataclasses.asdict(self.data)
        for key in ("root", "data_root", "num_workers", "verify", "verify_max_files", "val_split"):
            data.pop(key)
        model = dataclasses.asdict(self.model)
        model.pop("init_weights")  # only the very first iteration reads it
        optim = dataclasses.asdict(self.optim)
        optim.pop("compile")  # the same computation, compiled or not
        return {
            "model": model,
            "data": data,
            "optim": optim,
            "seed": self.seed,
            "deterministic": self.deterministic,
        }

    def fingerprint_hash(self) -> str:
        text = json.dumps(self.fingerprint(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def validate(self) -> None:
        """Cross-field checks (single values are checked while loading)."""
        o = self.optim
        if (o.iterations is None) == (o.epochs is None):
            raise InputError(
                f"set exactly one of optim.iterations and optim.epochs (got iterations={o.iterations}, "
                f"epochs={o.epochs}); e.g. --set optim.epochs=100"
            )
        positive = {
            "optim.batch_size": o.batch_size,
            "optim.accumulate": o.accumulate,
            "optim.iterations": o.iterations,
            "optim.epochs": o.epochs,
            "data.crop_size": self.data.crop_size,
            "output.keep_last": self.output.keep_last,
            "output.log_interval": self.output.log_interval,
            "model.num_classes": self.model.num_classes,
            "eval.limit": self.eval.limit,
            "data.verify_max_files": self.data.verify_max_files,
        }
        for key, value in positive.items():
            if value is not None and value < 1:
                raise InputError(f"{key} must be >= 1, got {value}")
        non_negative = {
            "optim.base_lr": o.base_lr,
            "optim.momentum": o.momentum,
            "optim.weight_decay": o.weight_decay,
            "optim.power": o.power,
            "optim.head_lr_mult": o.head_lr_mult,
            "optim.aux_weight": o.aux_weight,
            "eval.interval": self.eval.interval,
            "output.checkpoint_interval": self.output.checkpoint_interval,
            "output.tensorboard_images": self.output.tensorboard_images,
            "data.num_workers": self.data.num_workers,
            "seed": self.seed,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise InputError(f"{key} must be >= 0, got {value}")
        if self.dist_timeout_s <= 0:
            raise InputError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        for key, pair in (("data.scale", self.data.scale), ("data.rotate", self.data.rotate)):
            if pair is not None and (len(pair) != 2 or pair[0] > pair[1]):
                raise InputError(f"{key} must be [low, high] with low <= high, got {pair}")
        if self.data.scale is not None and self.data.scale[0] <= 0:
            raise InputError(f"data.scale must be positive, got {self.data.scale}")
        if not self.eval.scales or any(s <= 0 for s in self.eval.scales):
            raise InputError(
                f"eval.scales must be a non-empty list of positive numbers, got {self.eval.scales}"
            )
        if self.data.ignore_index is not None and not 0 <= self.data.ignore_index <= 65535:
            raise InputError(
                f"data.ignore_index must be in [0, 65535] (a value a mask can hold) or null, "
                f"got {self.data.ignore_index}"
            )
        _check_model_overrides(self.model.overrides)


def _check_model_overrides(overrides: dict[str, Any]) -> None:
    from pspnet.models.pspnet import PSPNetConfig

    allowed = [f.name for f in dataclasses.fields(PSPNetConfig) if f.name != "num_classes"]
    for key in overrides:
        if key == "num_classes":
            raise InputError(
                "model.overrides.num_classes: the class count is model.num_classes (null = the dataset's); "
                "set that instead and remove it from model.overrides"
            )
        if key not in allowed:
            raise InputError(f"unknown key model.overrides.{key}; allowed keys: {', '.join(allowed)}")
    try:
        PSPNetConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model.overrides: {exc}") from exc


# ----------------------------------------------------------------------------- type checking


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _float_text(text: str) -> float | str:
    """``"1e-4"`` -> 1e-4: PyYAML (YAML 1.1) reads exponents without a dot as strings, so ``1e-4``
    in a file or ``--set`` arrives as text. Anything else stays text (and is refused)."""
    try:
        return float(text.strip().replace("_", "x"))  # no "1_0": not a YAML float either
    except ValueError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints accepted for floats); InputError otherwise."""
    origin = typing.get_origin(tp)
    fail = InputError(f"{key}: invalid value {value!r}; expected {_describe(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
        raise fail
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise fail
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except InputError:
                continue
        raise fail
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise fail
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = _float_text(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
            if result != result or result in (float("inf"), float("-inf")):
                raise fail
            return result
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise fail  # pragma: no cover - every annotation above is handled


def _section_from_dict(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise InputError(
                f"unknown key {path}; allowed keys{' in ' + prefix if prefix else ''}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _section_from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def config_from_dict(data: Any) -> TrainConfig:
    """A validated :class:`TrainConfig` from plain data (e.g. parsed YAML)."""
    config = _section_from_dict(TrainConfig, data, "")
    config.validate()
    return config


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``"a.b=value"`` to nested ``data`` in place; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {assignment!r}: expected KEY=VALUE, e.g. optim.base_lr=0.02")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"--set {assignment!r}: value is not valid YAML ({exc})") from exc
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InputError(f"--set {assignment!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def list_shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (``pspnet train --config NAME``)."""
    folder = resources.files("pspnet") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _shipped_config(name_or_path: str | Path) -> Path | None:
    """The shipped config a bare name (``demo`` or ``demo.yaml``) means, if there is one."""
    path = Path(name_or_path)
    if path.parent != Path("."):
        return None
    shipped = resources.files("pspnet") / "configs" / f"{path.name.removesuffix('.yaml')}.yaml"
    return Path(str(shipped)) if shipped.is_file() else None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """The config file that ``--config`` / :func:`load_config` reads: an existing file always wins
    (a name without ``.yaml`` also finds ``NAME.yaml``: a local ``demo.yaml`` is read for
    ``demo``, shadowing the shipped one); else a shipped config name (``demo``,
    ``ade20k_pspnet50``). :func:`describe_config_source` says which one was meant.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    local = path.with_name(f"{path.name}.yaml") if path.suffix == "" and path.name else None
    if local is not None and local.is_file():
        return local
    shipped = _shipped_config(path)
    if shipped is not None:
        return shipped
    raise InputError(
        f"config {str(name_or_path)!r}: no such file and not a shipped config; "
        f"shipped configs: {', '.join(list_shipped_configs())}"
    )


def describe_config_source(name_or_path: str | Path) -> str:
    """One line naming the file ``name_or_path`` resolves to (``pspnet train`` prints it), and the
    shipped config that a local file of the same name shadows: a copy edited in another folder,
    or the shipped one read by mistake, is seen at once.

    Raises:
        InputError: as :func:`resolve_config_path`.
    """
    file = resolve_config_path(name_or_path)
    line = f"config: {file}"
    shipped = _shipped_config(name_or_path)
    if shipped is not None and file != shipped:
        line += f" (a local file; it shadows the shipped config {shipped.stem}, which is {shipped})"
    return line


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (a path or a shipped name; None = defaults) and apply ``--set`` overrides.

    Raises:
        InputError: unknown keys (with the allowed keys), bad values (with the allowed values),
            unreadable YAML, or inconsistent settings.
    """
    data: Any = {}
    if path is not None:
        file = resolve_config_path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{file}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise InputError(
                f"{file}: expected a mapping of sections at top level, got {type(data).__name__}"
            )
    for assignment in overrides:
        apply_override(data, assignment)
    return config_from_dict(data)
