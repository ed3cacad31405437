"""Model files: safetensors tensors plus the model description in the file's metadata.

Why safetensors: it holds tensors and strings only, so loading a file from the internet can never
run code, and it keeps working across torch releases (``torch.load`` changed its default to
``weights_only=True`` in 2.6 and broke many pickled checkpoints). A ``.safetensors`` file written
here rebuilds its model with no other input: the config, label space and preprocessing travel in
its metadata.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import Preprocess
from pspnet.errors import InputError, UnsafeFileError
from pspnet.models.pspnet import PSPNet, PSPNetConfig
from pspnet.models.registry import attach_metadata

__all__ = [
    "FORMAT_NAME",
    "LoadReport",
    "atomic_write",
    "from_pretrained",
    "load_model",
    "load_state_dict_into",
    "open_model",
    "read_model_metadata",
    "read_torch_file",
    "save_model",
    "save_pretrained",
]

FORMAT_NAME = "pspnet"
FORMAT_VERSION = "1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class LoadReport:
    """What a state-dict load did, by tensor name."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        def names(items: list[str]) -> str:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (left as initialised): {names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (ignored): {names(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatches (left as initialised): {names(shown)}")
        return "; ".join(parts)


def load_state_dict_into(
    model: torch.nn.Module, state_dict: Mapping[str, Tensor], *, allow_partial: bool = False
) -> LoadReport:
    """Copy matching tensors into ``model`` and report everything that did not match.

    A partial load (missing, unexpected or mis-shaped tensors) raises unless ``allow_partial``:
    silently keeping random weights is the classic way to evaluate a broken model. Fine-tuning to a
    new class count is the legitimate case: pass ``allow_partial=True`` and read the report.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_load[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state_dict]
    if not report.complete and not allow_partial:
        raise InputError(f"weights do not match the model: {report.summary()}; pass allow_partial to accept")
    model.load_state_dict(to_load, strict=False)
    return report


def _metadata(model: PSPNet, extra: Mapping[str, str] | None) -> dict[str, str]:
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "preset": getattr(model, "preset_name", "custom"),
        "config": json.dumps(model.config.to_dict()),
        "preprocess": json.dumps(model.preprocess.to_dict()),
        "dataset": json.dumps(model.dataset_info.to_dict()) if model.dataset_info else "",
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"metadata key {key!r} is reserved")
        meta[key] = str(value)
    return meta


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(model: PSPNet, path: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (weights + config + label space + preprocessing) to one safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = _metadata(model, extra)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a pspnet safetensors file, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise InputError(
            f"{path}: safetensors file without pspnet metadata; import foreign weights with "
            "'pspnet convert' first"
        )
    return meta


def _model_from_metadata(meta: Mapping[str, str]) -> PSPNet:
    config = PSPNetConfig.from_dict(json.loads(meta["config"]))
    dataset = DatasetInfo.from_dict(json.loads(meta["dataset"])) if meta.get("dataset") else None
    preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
    return attach_metadata(PSPNet(config), meta.get("preset", "custom"), dataset, preprocess)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> PSPNet:
    """Rebuild a model saved by :func:`save_model`; returned in eval mode."""
    meta = read_model_metadata(path)
    model = _model_from_metadata(meta)
    load_state_dict_into(model, load_file(str(path), device=str(map_location)))
    return model.to(map_location).eval()


def open_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """A pspnet ``.safetensors`` model, or an exported ``.onnx`` one run by onnxruntime.

    Both answer ``model(x) -> {"out": logits}`` and carry ``num_classes``, ``preprocess`` and
    ``dataset_info``, which is all that prediction and evaluation use.
    """
    if Path(path).suffix.lower() == ".onnx":
        from pspnet.export import OnnxModel

        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        return OnnxModel(path)
    return load_model(path, map_location)


def save_pretrained(model: PSPNet, directory: str | os.PathLike[str]) -> Path:
    """Write ``directory/model.safetensors`` and a human-readable ``directory/config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, directory / WEIGHTS_NAME)
    meta = _metadata(model, None)
    readable = {
        k: json.loads(v) if k in ("config", "preprocess", "dataset") and v else v for k, v in meta.items()
    }
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(readable, indent=2)))
    return directory


def from_pretrained(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> PSPNet:
    """Load a directory written by :func:`save_pretrained` (the weights file is authoritative)."""
    directory = Path(directory)
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} (expected a save_pretrained directory)")
    return load_model(directory / WEIGHTS_NAME, map_location)


def _unpickling_reason(exc: Exception) -> str:
    """The line of torch's message that names the blocked object (not its advice to disable safety)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line
    return type(exc).__name__


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """Read a ``.pth`` with ``torch.load(weights_only=True)`` only.

    A file that needs arbitrary unpickling (pickled classes, functions, optimiser objects) is
    refused with :class:`UnsafeFileError`: the restricted unpickler stops before any of its code
    runs, and we never retry with the unsafe loader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused: loading it would need arbitrary code execution ({_unpickling_reason(exc)}). "
            "Only tensors, numbers, strings and containers of them are accepted"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
