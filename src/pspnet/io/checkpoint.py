"""Model files: safetensors tensors plus the model description in the file's metadata.

Why safetensors: it holds tensors and strings only, so loading a file from the internet can never
run code, and it keeps working across torch releases (``torch.load`` changed its default to
``weights_only=True`` in 2.6 and broke many pickled checkpoints). A ``.safetensors`` file written
here rebuilds its model with no other input: the config, label space and preprocessing travel in
its metadata.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize_tensors
from torch import Tensor

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import Preprocess
from pspnet.errors import InputError, StorageError, UnsafeFileError
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
    "save_torch_file",
    "storage_error",
    "storage_reason",
]

FORMAT_NAME = "pspnet"
FORMAT_VERSION = "1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MAX_BIN = 256
"""Largest pyramid bin accepted from a model file: a hostile ``bins`` value would otherwise make the
first forward pass allocate ``bin x bin`` maps of unbounded size (the paper uses 1, 2, 3, 6)."""

_STORAGE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free some space or write to another folder"),
    errno.EFBIG: ("file too large for the file system", "write to another file system"),
    errno.EIO: ("I/O error from the storage device", "check the disk or write to another folder"),
    errno.EROFS: ("read-only file system", "write to another folder"),
}
if hasattr(errno, "EDQUOT"):
    _STORAGE_FAILURES[errno.EDQUOT] = ("disk quota exceeded", "free some space or write to another folder")


def _file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()
"""Mode of the files we write. ``mkstemp`` creates ``0o600`` files, which teammates on a shared
cluster could not read; the temporary file gets the usual mode before it is renamed."""
_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report I/O errors


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


def _storage_errno(exc: BaseException) -> int | None:
    """The errno of a storage failure behind ``exc`` (its cause/context chain included), else None.

    Libraries wrap I/O errors: ``torch.save`` raises a RuntimeError whose context is the OSError,
    safetensors a SafetensorError whose message says ``os error 28``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_FAILURES:
            return current.errno
        match = _OS_ERROR_CODE.search(str(current))
        if match and int(match.group(1)) in _STORAGE_FAILURES:
            return int(match.group(1))
        current = current.__cause__ or current.__context__
    return None


def storage_reason(code: int | None) -> str:
    """``"disk full (No space left on device)"`` for an errno from :func:`storage_error`."""
    if code not in _STORAGE_FAILURES:
        return "write failed" if code is None else f"write failed ({os.strerror(code)})"
    return f"{_STORAGE_FAILURES[code][0]} ({os.strerror(code)})"


def storage_error(path: str | os.PathLike[str], exc: BaseException) -> StorageError | None:
    """A one-line :class:`StorageError` for ``path`` when ``exc`` is a storage failure (disk full,
    quota, I/O error, read-only), else None (a bug or a user mistake: let it propagate as is)."""
    if isinstance(exc, StorageError):
        return exc
    code = _storage_errno(exc)
    if code is None:
        return None
    return StorageError(
        f"{path}: could not write it: {storage_reason(code)}; nothing partial was left; "
        f"{_STORAGE_FAILURES[code][1]}, then retry",
        code,
    )


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half file.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and is
    fsync'ed before the rename, so a power cut cannot leave an empty file under the final name.

    Raises:
        StorageError: the disk is full (or another storage failure, see :func:`storage_error`);
            the temporary file is removed and ``path`` keeps its previous content, if any.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        error = storage_error(path, exc)
        if error is None:
            raise
        raise error from exc
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = storage_error(path, exc) if isinstance(exc, Exception) else None
        if error is None or error is exc:
            raise
        raise error from exc
    return path


def save_torch_file(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_write`.

    The object is serialised in memory first and written with a plain file write, so a full
    disk raises ``OSError(ENOSPC)`` (torch's own file writer reports it as an opaque RuntimeError).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def save_model(model: PSPNet, path: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (weights + config + label space + preprocessing) to one safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory and written with a plain file write: a full disk then raises a real
    # OSError(ENOSPC) that atomic_write reports in one line (safetensors' own writer wraps it).
    data = serialize_tensors(tensors, metadata=_metadata(model, extra))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a pspnet safetensors file, without reading the tensors."""
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


def _model_from_metadata(meta: Mapping[str, str], path: Path) -> PSPNet:
    """Build the (randomly initialised) model a file describes, after checking the description.

    The metadata of a downloaded file is untrusted: it is parsed defensively, and the network is
    first built on the ``meta`` device (no memory) and compared with the file's tensor shapes, so a
    file whose metadata claims, say, 10^8 classes is refused instead of allocating 25 GB.
    """
    try:
        config = PSPNetConfig.from_dict(json.loads(meta["config"]))
        dataset = DatasetInfo.from_dict(json.loads(meta["dataset"])) if meta.get("dataset") else None
        preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
        raise InputError(
            f"{path}: invalid pspnet metadata ({detail}); re-save the model with pspnet.save_model or "
            "re-import it with 'pspnet convert'"
        ) from exc
    too_big = [b for b in config.bins if b > MAX_BIN]
    if too_big:
        raise InputError(f"{path}: pyramid bins {too_big} exceed the limit of {MAX_BIN}; refusing this file")
    with torch.device("meta"):
        skeleton = PSPNet(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(path), framework="pt") as handle:
        found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    if expected != found:
        report = LoadReport(
            loaded=[k for k in found if expected.get(k) == found[k]],
            missing=[k for k in expected if k not in found],
            unexpected=[k for k in found if k not in expected],
            mismatched=[
                (k, found[k], expected[k]) for k in found if k in expected and expected[k] != found[k]
            ],
        )
        raise InputError(
            f"{path}: its tensors do not match the model its metadata describes: {report.summary(limit=3)}"
        )
    return attach_metadata(PSPNet(config), meta.get("preset", "custom"), dataset, preprocess)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> PSPNet:
    """Rebuild a model saved by :func:`save_model`; returned in eval mode.

    Raises:
        FileNotFoundError: no such file. InputError: not a pspnet safetensors file, invalid
            metadata, or tensors that do not match it (the message names the file).
    """
    path = Path(path)
    meta = read_model_metadata(path)
    try:
        model = _model_from_metadata(meta, path)
        load_state_dict_into(model, load_file(str(path), device=str(map_location)))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
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
