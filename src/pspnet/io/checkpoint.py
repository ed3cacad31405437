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
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    "ReleaseFile",
    "SkippedObject",
    "atomic_write",
    "from_pretrained",
    "load_model",
    "load_state_dict_into",
    "open_model",
    "read_model_metadata",
    "read_release_file",
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
        raise InputError(
            f"weights do not match the model: {report.summary()}; "
            "load_state_dict_into(..., allow_partial=True) accepts a partial load"
        )
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
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name, e.g. {path / 'model.safetensors'}")
    # The name is chosen before the file exists, so the clean-up below knows it even when an
    # interrupt (Ctrl-C, SIGTERM) lands right after the file's creation; with tempfile.mkstemp
    # such an interrupt left the file behind (seen in about 1 of 10 SIGTERMs of `pspnet predict`).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        created = True
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if created or not isinstance(exc, FileExistsError):  # never remove a file someone else made
            tmp.unlink(missing_ok=True)
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


def _require_pspnet(model: Any, action: str) -> None:
    """Refuse anything but a PSPNet in one line, naming the usual wrappers' way back to it."""
    if isinstance(model, PSPNet):
        return
    inner = next((a for a in ("module", "_orig_mod") if isinstance(getattr(model, a, None), PSPNet)), None)
    hint = (
        f"; pass model.{inner} (the PSPNet inside the {type(model).__name__} wrapper)"
        if inner
        else "; build one with pspnet.create_model or pspnet.load_model"
    )
    raise InputError(f"{action} needs a pspnet PSPNet, got {type(model).__name__}{hint}")


def save_model(model: PSPNet, path: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (weights + config + label space + preprocessing) to one safetensors file.

    Raises:
        InputError: ``model`` is not a PSPNet (only a PSPNet has the config that rebuilds it), or
            ``path`` is a directory.
    """
    _require_pspnet(model, "save_model")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory and written with a plain file write: a full disk then raises a real
    # OSError(ENOSPC) that atomic_write reports in one line (safetensors' own writer wraps it).
    data = serialize_tensors(tensors, metadata=_metadata(model, extra))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a pspnet safetensors file, without reading the tensors."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder, not a model file; give the .safetensors file (a save_pretrained "
            "folder loads with from_pretrained)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        foreign = _foreign_model_hint(path)
        if foreign:
            raise InputError(f"{path}: {foreign}") from exc
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise InputError(
            f"{path}: safetensors file without pspnet metadata; import foreign weights with "
            "'pspnet convert' first"
        )
    return meta


def _foreign_model_hint(path: Path) -> str | None:
    """What a file given as a model is instead, with the fix, when we can tell: the released
    checkpoints (``.pth``, ``.caffemodel``) and exported ONNX files are the usual mix-ups."""
    from pspnet.io.convert import looks_like_caffemodel  # convert imports this module

    convert = f"import it first with 'pspnet convert {path} {_stem(path)}.safetensors'"
    if _looks_like_safetensors(path):  # a damaged safetensors file: its own error says more
        return None
    kind = _torch_file_kind(path)
    if kind in ("zip", "pickle", "tar"):
        return f"a PyTorch checkpoint, not a pspnet model file; {convert}"
    if path.suffix.lower() == ".caffemodel" or looks_like_caffemodel(path):
        return f"a Caffe model, not a pspnet model file; {convert}"
    if path.suffix.lower() == ".onnx":
        return "an ONNX model: open it with pspnet.io.checkpoint.open_model or pspnet.export.OnnxModel"
    return None


def _stem(path: Path) -> str:
    """``path`` without its suffixes (``a.pth.tar`` -> ``a``), for suggested output names."""
    name = path.name
    for suffix in (".tar", ".pth", ".pt", ".ckpt", ".bin", ".caffemodel", ".safetensors"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return str(path.with_name(name or "model"))


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
        FileNotFoundError: no such file. InputError: a folder, not a pspnet safetensors file, invalid
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
    ``dataset_info``, which is all that prediction and evaluation use. A released checkpoint
    (``.pth``, ``.caffemodel``) is refused with the ``pspnet convert`` command that imports it.
    """
    if Path(path).is_dir():
        raise InputError(f"{path}: is a folder; give the .safetensors or .onnx model file")
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
    """Load a directory written by :func:`save_pretrained` (the weights file is authoritative).

    A model file path is accepted too (loaded with :func:`load_model`).
    """
    directory = Path(directory)
    if directory.is_file():
        return load_model(directory, map_location)
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} (expected a save_pretrained directory)")
    return load_model(directory / WEIGHTS_NAME, map_location)


# the restricted unpickler's refusals of objects it would have to build with code (torch 2.x wording)
_NEEDS_CODE = re.compile(
    r"GLOBAL|unsupported global|unrecognized function|can only build|can only create new object|"
    r"persistent_load",
    re.IGNORECASE,
)
_GLOBAL_NAME = re.compile(r"GLOBAL (\S+)")
_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "Check the documentation")


def _unpickling_detail(exc: BaseException) -> str:
    """The restricted unpickler's own line, out of torch's multi-line advice around it."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    return (own or lines or [""])[0]


def _needs_code(exc: BaseException) -> bool:
    """Whether the unpickler stopped at an object it would have to build with code."""
    return bool(_NEEDS_CODE.search(_unpickling_detail(exc)))


def _unpickling_reason(exc: BaseException) -> str:
    """What torch's refusal names (``it pickles posix.system``), without its advice to allowlist it."""
    detail = _unpickling_detail(exc)
    match = _GLOBAL_NAME.search(detail)
    if match:
        return f"it pickles {match.group(1)}"
    return detail.split(". Please")[0][:200] or type(exc).__name__


def _exception_text(exc: BaseException) -> str:
    """The first sentence of ``str(exc)`` on one line, else the exception's type (some errors carry
    no message, torch's zip reader appends a paragraph of advice)."""
    text = " ".join(str(exc).split()).split(". ")[0]
    return text[:200] or type(exc).__name__


def _torch_file_kind(path: Path) -> str:
    """``"zip"`` (torch >= 1.6), ``"pickle"`` (legacy torch.save), ``"tar"`` (torch < 0.4),
    ``"empty"`` or ``"other"``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(262)
    except OSError:
        return "other"
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    return "pickle" if head[:1] == b"\x80" else "other"


def _check_torch_format(path: Path) -> None:
    """Refuse in one line what is not a torch file at all (empty, text, a Caffe or safetensors file).

    Without this, the restricted unpickler reads any bytes as opcodes and fails with errors such
    as ``KeyError: 101`` or "would need arbitrary code execution (Unsupported operand 10)".
    """
    kind = _torch_file_kind(path)
    if kind == "empty":
        raise InputError(f"{path}: not a readable PyTorch checkpoint (empty file)")
    if kind == "other":
        hint = ""
        if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
            hint = "; it is a safetensors file (pspnet.load_model reads pspnet ones)"
        raise InputError(
            f"{path}: not a PyTorch checkpoint (neither the zip archive nor the pickle that torch.save "
            f"writes){hint}"
        )


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """Read a ``.pth`` with ``torch.load(weights_only=True)`` only.

    A file that needs arbitrary unpickling (pickled classes, functions, optimiser objects) is
    refused with :class:`UnsafeFileError`: the restricted unpickler stops before any of its code
    runs, and we never retry with the unsafe loader. Third-party checkpoints that pickle harmless
    bookkeeping objects next to their tensors go through :func:`read_release_file` instead.

    Raises:
        FileNotFoundError: no such file. UnsafeFileError: the file pickles code.
        InputError: not a torch file, or damaged (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_torch_format(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _needs_code(exc):
            raise InputError(
                f"{path}: not a readable PyTorch checkpoint ({_unpickling_reason(exc)})"
            ) from exc
        raise UnsafeFileError(
            f"{path}: refused: loading it would need arbitrary code execution ({_unpickling_reason(exc)}). "
            "Only tensors, numbers, strings and containers of them are accepted"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # the unpickler fails on damaged files with any exception type
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_exception_text(exc)})") from exc


class SkippedObject:
    """Inert stand-in for a pickled object whose class :func:`read_release_file` does not import.

    Subclassed once per pickled name (``qualified_name``). It accepts any constructor arguments
    and any pickled state and ignores them: no method of the real class exists here, so nothing
    the file names can run. Such objects are never used; only tensors and strings are read.
    """

    qualified_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> SkippedObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<skipped {self.qualified_name}>"


_STUBBABLE_STDLIB = frozenset(
    {
        "_codecs.encode",  # numpy arrays' bytes in protocol-2 pickles
        "argparse.Namespace",
        "collections.defaultdict",
        "collections.deque",
        "datetime.date",
        "datetime.datetime",
        "datetime.timedelta",
        "datetime.timezone",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "pathlib.WindowsPath",
    }
)
"""Standard-library names seen in training checkpoints' bookkeeping (arguments, dates, paths)."""


def _stubbable(name: str) -> bool:
    """Whether a pickled global may be replaced by a :class:`SkippedObject`.

    Stubs never run anything, whatever the name; this decides only which files are worth reading.
    Training frameworks' bookkeeping (mmengine's ``HistoryBuffer``, numpy scalars, a trainer's own
    classes) is; a file naming ``os.system``, ``builtins.eval`` or any other standard-library or
    torch code (a whole pickled ``nn.Module``, an optimiser object) is hostile or not a weights
    file, and stays refused.
    """
    root = name.split(".", 1)[0]
    if name in _STUBBABLE_STDLIB:
        return True
    return root not in sys.stdlib_module_names and root not in ("torch", "__builtin__", "builtins")


@dataclass(frozen=True)
class ReleaseFile:
    """A third-party checkpoint as read by :func:`read_release_file`.

    Attributes:
        content: what ``torch.load`` returned, with :class:`SkippedObject` stand-ins.
        skipped: the pickled names replaced by stand-ins (empty for a plain weights file).
    """

    content: Any
    skipped: tuple[str, ...] = ()

    def note(self) -> str | None:
        """A line for the user naming what was not read, or None."""
        if not self.skipped:
            return None
        return (
            "skipped pickled objects the weights do not need (their code was neither imported nor run): "
            + ", ".join(self.skipped)
        )


def read_release_file(path: str | os.PathLike[str]) -> ReleaseFile:
    """Read the tensors of a third-party checkpoint (released weights, someone's training run).

    Checkpoints written by training frameworks pickle bookkeeping objects next to the weights
    (mmengine's ``message_hub`` holds ``HistoryBuffer`` objects, ``meta`` numpy scalars), which
    ``torch.load(weights_only=True)`` refuses. Here the file is first read as
    :func:`read_torch_file` does; if that refuses it, the names it pickles are listed statically
    (``torch.serialization.get_unsafe_globals_in_checkpoint``, no unpickling) and the restricted
    unpickler is run again with an inert :class:`SkippedObject` allowlisted under each name. The
    named modules are never imported and their code never runs; only the tensors and strings of
    the result may be used. Names of standard-library or torch code stay refused (see
    :func:`_stubbable`), and so does a file whose tensors themselves need the skipped code.

    Raises:
        FileNotFoundError, UnsafeFileError, InputError: as :func:`read_torch_file`.
    """
    path = Path(path)
    try:
        return ReleaseFile(read_torch_file(path))
    except UnsafeFileError as exc:
        refusal = exc
    try:
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
    except Exception:  # legacy (non-zip) files or opcodes the scanner does not know: stay refused
        raise refusal from None
    if not names:
        raise refusal
    unsafe = [name for name in names if not _stubbable(name)]
    if unsafe:
        whole = any(name.startswith("torch.nn.modules.") for name in unsafe)
        raise UnsafeFileError(
            f"{path}: refused: loading it would need arbitrary code execution (it pickles "
            f"{', '.join(unsafe[:5])}). Only tensors, numbers, strings and containers of them are accepted"
            + ("; this is a whole pickled model: save model.state_dict() instead" if whole else "")
        )
    stubs = [
        (type(name.rsplit(".", 1)[-1], (SkippedObject,), {"qualified_name": name}), name) for name in names
    ]
    try:
        with torch.serialization.safe_globals(stubs):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise UnsafeFileError(
            f"{path}: refused: part of its content (its tensors, or a container of them) needs the code of "
            f"{', '.join(names[:5])}, which is never run here ({_unpickling_reason(exc)}); if you trust the "
            "file, re-save its state dict as plain tensors with the library that wrote it"
        ) from exc
    return ReleaseFile(content, tuple(names))
