"""Import released weights into our model.

Each source has a reader that turns a file into :class:`ImportedWeights` (an architecture, a
complete state dict under our key names, the preprocessing the weights expect); the shared
:func:`convert_checkpoint` then checks it against a preset, loads it strictly and saves it.

Sources:
- ``semseg``: the authors' PyTorch release (hszhao/semseg ``train_epoch_*.pth``): a dict with
  ``state_dict`` (keys prefixed ``module.`` because it was saved from DataParallel/DDP), ``epoch``
  and ``optimizer``. Our module names were chosen so that the mapping is a prefix rename.
- ``mmseg``: MMSegmentation PSPNet checkpoints (:mod:`pspnet.io.convert_mmseg`).
- ``caffe``: the authors' Caffe ``.caffemodel`` files (:mod:`pspnet.io.convert_caffe`).

Torch files are read with ``torch.load(weights_only=True)`` only (:func:`read_release_file`): a
checkpoint that would need arbitrary unpickling is refused, never executed. Bookkeeping objects
that training frameworks pickle next to the weights (mmengine's ``HistoryBuffer``, numpy scalars)
are replaced by inert stand-ins without importing their code, and named in a note.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import InputError
from pspnet.io.checkpoint import (
    FORMAT_NAME,
    LoadReport,
    ReleaseFile,
    SkippedObject,
    load_state_dict_into,
    read_release_file,
    save_model,
)
from pspnet.models.pspnet import PSPNet, PSPNetConfig
from pspnet.models.registry import attach_metadata, get_preset

__all__ = [
    "SEMSEG_PREFIXES",
    "SOURCES",
    "ConversionResult",
    "ImportedWeights",
    "convert_checkpoint",
    "detect_source",
    "infer_semseg_config",
    "load_init_weights",
    "looks_like_caffemodel",
    "read_checkpoint",
    "read_semseg",
    "semseg_to_pspnet",
    "unwrap_state_dict",
]


@dataclass
class ImportedWeights:
    """What a source reader hands to :func:`convert_checkpoint`.

    Attributes:
        config: the architecture the weights compute with (read off the file, not assumed).
        state: every model tensor, under our key names (a missing one is an error, not a default).
        preprocess: the input normalisation the weights were trained with.
        dropped: source tensors deliberately not imported, e.g. an optimizer's or a loss layer's.
        notes: facts the user should see, e.g. "PPM concatenation order reversed into ours".
        class_names: the class names saved in the file, if any (checked against a ``--preset``).
        dataset: the label space to store when no preset is given, if the file describes one whole.
        dataset_note: a line about ``dataset`` (stored, or why not), shown without a preset.
    """

    config: PSPNetConfig
    state: dict[str, Tensor]
    preprocess: Preprocess = PYTORCH_PREPROCESS
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] = ()
    dataset: DatasetInfo | None = None
    dataset_note: str | None = None


SourceReader = Callable[[Path, tuple[int, ...]], ImportedWeights]

# source name -> "module:function"; imported lazily so one broken source cannot break the others
SOURCES: dict[str, str] = {
    "semseg": "pspnet.io.convert:read_semseg",
    "mmseg": "pspnet.io.convert_mmseg:read_mmseg",
    "caffe": "pspnet.io.convert_caffe:read_caffe",
}


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
    source: str = "semseg"
    notes: list[str] = field(default_factory=list)


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
        if isinstance(value, SkippedObject):
            raise InputError(
                f"{source}: entry {key!r} is a pickled {value.qualified_name} object, whose code is never "
                "run here, not a plain tensor; re-save the state dict as plain tensors with the library "
                "that wrote it"
            )
        if not isinstance(value, Tensor):
            raise InputError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def semseg_to_pspnet(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
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
            f"{source}: not an hszhao/semseg PSPNet state dict: {len(unknown)} unknown keys, "
            f"e.g. {unknown[:5]}"
        )
    return out


def infer_semseg_config(
    state: Mapping[str, Tensor], bins: tuple[int, ...] = (1, 2, 3, 6), source: str = "checkpoint"
) -> PSPNetConfig:
    """Read depth, widths, class count, PPM and aux presence off the tensors' names and shapes.

    Pool sizes have no parameters, so ``bins`` cannot be read from the file: the number of branches
    is checked against it instead.
    """
    if "cls.4.weight" not in state:
        raise InputError(
            f"{source}: not an hszhao/semseg PSPNet state dict: no 'cls.4.weight' (the classifier)"
        )
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    depth = _DEPTH_BY_LAYER3_BLOCKS.get(len(blocks))
    if depth is None:
        raise InputError(
            f"{source}: unsupported backbone: layer3 has {len(blocks)} blocks "
            "(ResNet-50/101/152 have 6/23/36)"
        )
    branches = {int(m.group(1)) for k in state if (m := re.match(r"ppm\.features\.(\d+)\.", k))}
    use_ppm = bool(branches)
    if use_ppm and len(branches) != len(bins):
        raise InputError(
            f"{source}: the checkpoint has {len(branches)} pyramid branches but bins={tuple(bins)}; "
            "pass the bins it was trained with (--bins)"
        )
    needed = ["layer0.0.weight", "cls.0.weight", *(f"layer{i}.0.conv1.weight" for i in range(1, 5))]
    absent = [k for k in needed if k not in state]
    if absent:
        raise InputError(f"{source}: not an hszhao/semseg PSPNet state dict: missing {absent}")
    widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    aux = "aux.4.weight" in state
    return PSPNetConfig(
        num_classes=int(state["cls.4.weight"].shape[0]),
        depth=depth,
        stem_width=int(state["layer0.0.weight"].shape[0]),
        widths=widths,  # type: ignore[arg-type]
        use_ppm=use_ppm,
        bins=tuple(bins),
        head_channels=int(state["cls.0.weight"].shape[0]),
        aux=aux,
        aux_channels=int(state["aux.0.weight"].shape[0]) if aux else 256,
    )


_READ_ONCE: ContextVar[dict[Path, ReleaseFile] | None] = ContextVar("pspnet_convert_reads", default=None)


@contextmanager
def _each_file_read_once() -> Iterator[None]:
    """Within one conversion, source detection and the reader share one read of the file.

    A file with bookkeeping objects costs a strict read, a scan and a second read with stand-ins;
    without this, detection and the reader did all of that twice for a multi-hundred-MB release.
    """
    token = _READ_ONCE.set({})
    try:
        yield
    finally:
        _READ_ONCE.reset(token)


def read_checkpoint(path: Path) -> ReleaseFile:
    """A released torch checkpoint's content (see :func:`read_release_file`); a Caffe model given
    as one is named as such instead of failing as a damaged pickle."""
    if looks_like_caffemodel(path):
        raise InputError(
            f"{path}: looks like a Caffe model (a protobuf NetParameter), not a torch file; "
            "pass --source caffe or rename it to .caffemodel"
        )
    reads = _READ_ONCE.get()
    key = Path(path).resolve()
    if reads is not None and key in reads:
        return reads[key]
    release = read_release_file(path)
    if reads is not None:
        reads[key] = release
    return release


def _not_network(raw: Any, wrappers: tuple[str, ...]) -> list[str]:
    """Top-level entries of a checkpoint dict besides the weights (``epoch``, ``optimizer``...)."""
    if not isinstance(raw, Mapping) or not any(
        isinstance(raw.get(k), Mapping) for k in ("state_dict", "model")
    ):
        return []
    return [str(k) for k in raw if k not in wrappers]


def _dtype_note(state: Mapping[str, Tensor]) -> str | None:
    halves = [k for k, v in state.items() if v.dtype in (torch.float16, torch.bfloat16)]
    if not halves:
        return None
    return f"{len(halves)} of {len(state)} tensors stored as {state[halves[0]].dtype}: upcast to float32"


def read_semseg(path: Path, bins: tuple[int, ...]) -> ImportedWeights:
    """Reader for the authors' PyTorch release (hszhao/semseg)."""
    release = read_checkpoint(path)
    state = unwrap_state_dict(release.content, str(path))
    config = infer_semseg_config(state, bins, str(path))
    notes = [
        f"hszhao/semseg {'PSPNet' if config.use_ppm else 'FCN'}: ResNet-{config.depth}, "
        f"{config.num_classes} classes"
        + (
            f", pyramid bins {tuple(bins)} (pool sizes are not stored in the file; --bins sets them)"
            if config.use_ppm
            else ""
        ),
        "normalisation: the authors' PyTorch one (RGB, ImageNet mean/std on 0-255); not stored in the file",
    ]
    notes += [n for n in (_dtype_note(state), release.note()) if n]
    dropped = _not_network(release.content, ("state_dict", "model"))
    return ImportedWeights(config, semseg_to_pspnet(state, str(path)), PYTORCH_PREPROCESS, dropped, notes)


# Tags of the NetParameter fields that can follow its name: layer (100), V1 layers (2), input (3),
# input_dim (4), force_backward (5), state (6), debug_info (7), input_shape (8).
_NET_TAGS_AFTER_NAME = (b"\xa2\x06", b"\x12", b"\x1a", b"\x20", b"\x28", b"\x32", b"\x38", b"\x42")


def looks_like_caffemodel(path: str | os.PathLike[str]) -> bool:
    """A NetParameter starts with field 1 (name: ``0x0a``, a short length, printable text, then
    another NetParameter field) or with field 100 (layer, ``0xa2 0x06``); torch files are zip
    (``PK``) or pickle (``0x80``) archives, and a text file starting with a newline fails the name
    check."""
    try:
        with open(path, "rb") as f:
            head = f.read(260)
    except OSError:
        return False
    if head[:2] == b"\xa2\x06":
        return True
    if head[:1] != b"\x0a" or len(head) < 3 or head[1] >= 0x80:  # names longer than 127: not ours
        return False
    length = head[1]
    name, rest = head[2 : 2 + length], head[2 + length :]
    printable = len(name) == length and all(0x20 <= c < 0x7F for c in name)
    return printable and rest.startswith(_NET_TAGS_AFTER_NAME)


def detect_source(path: str | os.PathLike[str]) -> str:
    """Guess the source of a weights file: ``.caffemodel`` by name, torch files by their keys."""
    path = Path(path)
    if path.suffix.lower() == ".caffemodel":
        return "caffe"
    state = unwrap_state_dict(read_checkpoint(path).content, str(path))
    keys = state.keys()
    if any(k.startswith("decode_head.") for k in keys):
        return "mmseg"
    if any(k.startswith(("layer0.", "cls.")) for k in keys):
        return "semseg"
    _refuse_backbone(path, state)
    raise InputError(
        f"{path}: cannot tell which release this is (no 'decode_head.*' keys as in MMSegmentation, "
        "no 'layer0.*'/'cls.*' keys as in hszhao/semseg); pass --source"
    )


def _refuse_backbone(path: Path, state: Mapping[str, Tensor]) -> None:
    """An ImageNet classification backbone is not a segmentation release: say where it goes."""
    from pspnet.io.backbone import imagenet_to_backbone  # backbone imports this module

    try:
        _, _, layout = imagenet_to_backbone(state)
    except InputError:
        return
    if layout.depth is None:  # a stem alone is no ResNet
        return
    raise InputError(
        f"{path}: an ImageNet classification backbone, {layout.describe()}, not a segmentation "
        "checkpoint: there is nothing to convert; train from it with model.backbone_weights in the "
        "config, or create_model(..., backbone_weights=PATH) in Python"
    )


def _refuse_safetensors(path: Path) -> None:
    """No release is a safetensors file: say what this one is (a pspnet model needs no conversion;
    an ImageNet backbone, e.g. timm's ``model.safetensors``, goes to ``model.backbone_weights``).
    Anything else falls through to the torch reader's one-line refusal."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("format") == FORMAT_NAME:
                raise InputError(
                    f"{path}: already a pspnet model; nothing to convert (use it as it is: --model, "
                    "pspnet.load_model)"
                )
            names = list(handle.keys())  # a safe_open handle is not iterable
            state = {key: handle.get_tensor(key) for key in names}
    except InputError:
        raise
    except Exception:  # not a readable safetensors file: the torch reader explains
        return
    _refuse_backbone(path, state)


def _reader(source: str) -> SourceReader:
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; supported: {', '.join(['auto', *SOURCES])}")
    module_name, function = SOURCES[source].split(":")
    return getattr(importlib.import_module(module_name), function)


def _check_preset(src: Path, preset: str, config: PSPNetConfig) -> None:
    """The preset gives the label space; the file gives the architecture. They must agree on classes."""
    expected = get_preset(preset).config
    diffs = {
        name: (getattr(config, name), getattr(expected, name))
        for name in ("num_classes", "depth", "use_ppm")
        if getattr(config, name) != getattr(expected, name)
    }
    if diffs:
        raise InputError(f"{src}: weights do not fit preset {preset!r}: (file, preset) differ in {diffs}")


def _check_destination(src: Path, dst: Path) -> None:
    """Refuse output names that would destroy the source or hide what the file is."""
    if dst.resolve() == src.resolve() or (dst.exists() and dst.samefile(src)):
        raise InputError(
            f"{dst}: is the source checkpoint itself; write the converted model to a new file, e.g. "
            f"{dst.with_suffix('.safetensors')}"
        )
    if dst.suffix.lower() != ".safetensors":
        raise InputError(
            f"{dst}: the converted model is a safetensors file; name it with the .safetensors suffix, "
            f"e.g. {dst.with_name(dst.stem + '.safetensors')}"
        )


def _class_key(name: str) -> str:
    """``"Traffic_Light "`` and ``"traffic light"`` compare equal; synonyms after a comma do not count."""
    return " ".join(name.split(",")[0].replace("_", " ").lower().split())


def _check_class_names(
    src: Path, preset: str, names: tuple[str, ...], dataset: DatasetInfo | None
) -> list[str]:
    """A preset must describe the classes the file was trained on, not just as many of them.

    Spelling differences (case, ``_``, a trailing space, synonyms) are tolerated and noted; a file
    whose names mostly differ was trained on another label space and is refused.
    """
    if not names or dataset is None or len(names) != dataset.num_classes:
        return []
    differ = [
        (i, ours, theirs)
        for i, (ours, theirs) in enumerate(zip(names, dataset.class_names, strict=True))
        if _class_key(ours) != _class_key(theirs)
    ]
    if not differ:
        return []
    shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in differ[:3])
    if len(differ) * 2 > len(names):
        raise InputError(
            f"{src}: trained on other classes than preset {preset!r} ({len(differ)} of {len(names)} "
            f"names differ, e.g. {shown} (file vs preset)); convert without --preset"
        )
    return [
        f"{len(differ)} class names differ from preset {preset!r} ({shown}, file vs preset): kept its names"
    ]


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    source: str = "auto",
    preset: str | None = None,
    bins: tuple[int, ...] = (1, 2, 3, 6),
) -> ConversionResult:
    """Convert a released checkpoint into a pspnet model (and a safetensors file if ``dst``).

    Args:
        src: the checkpoint file.
        dst: where to write the converted model (skipped when None); it must end in
            ``.safetensors`` and must not be ``src``.
        source: ``"auto"`` (by file name and keys), or one of :data:`SOURCES`.
        preset: optional preset whose label space the weights belong to (e.g.
            ``"pspnet50_ade20k"``); its class count and depth must match the file. The
            architecture details (stem, strides, alignment) and the preprocessing come from the file.
        bins: pyramid bins the checkpoint was trained with (pool sizes have no parameters).
    """
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if dst is not None:
        _check_destination(src, Path(dst))
    if src.suffix.lower() == ".safetensors":
        _refuse_safetensors(src)
    with _each_file_read_once():
        source = detect_source(src) if source == "auto" else source
        imported = _reader(source)(src, tuple(bins))
    config = imported.config
    dataset: DatasetInfo | None = imported.dataset
    name = f"pspnet{config.depth}" if config.use_ppm else f"fcn{config.depth}"
    notes = list(imported.notes)
    if preset is not None:
        _check_preset(src, preset, config)
        dataset, name = get_preset(preset).dataset, preset
        notes += _check_class_names(src, preset, imported.class_names, dataset)
    elif imported.dataset_note:
        notes.append(imported.dataset_note)
    model = attach_metadata(PSPNet(config), name, dataset, imported.preprocess)
    report = load_state_dict_into(model, imported.state, allow_partial=True)
    if not report.complete:
        problems = [f"missing {report.missing[:3]}" if report.missing else ""]
        problems.append(f"unplaced {report.unexpected[:3]}" if report.unexpected else "")
        wrong = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched[:3]]
        problems.append(f"mis-shaped (file vs network) {wrong}" if wrong else "")
        raise InputError(
            f"{src}: the weights do not form the network their own shapes describe "
            f"({'; '.join(p for p in problems if p)}); the file is damaged, or it holds another network"
        )
    model.eval()
    extra = {"converted_from": src.name, "source": source}
    path = save_model(model, dst, extra=extra) if dst else None
    if imported.dropped:
        notes.append(f"not imported (not part of the network): {', '.join(imported.dropped)}")
    return ConversionResult(model, report, path, source, notes)


# settings that change what the weights compute without changing any tensor's name or shape
_TENSORLESS_FIELDS = ("stride_in_1x1", "align_corners", "contract_dilation", "output_stride")


def _refuse_tensorless_differences(path: Path, source: PSPNet, model: PSPNet) -> None:
    """Weights loaded into a model that would compute something else with them are refused, named."""
    diffs = {
        f: getattr(source.config, f)
        for f in _TENSORLESS_FIELDS
        if getattr(source.config, f) != getattr(model.config, f)
    }
    if diffs:
        sets = " ".join(f"--set model.overrides.{k}={str(v).lower()}" for k, v in diffs.items())
        raise InputError(f"{path}: these weights compute with {diffs}, the model here does not; add {sets}")
    if source.preprocess != model.preprocess:
        raise InputError(
            f"{path}: these weights expect input normalised as {source.preprocess}, but training feeds "
            f"{model.preprocess}; fine-tune from the hszhao/semseg release or an ImageNet backbone instead "
            "(docs/convert.md)"
        )


def load_init_weights(model: PSPNet, path: str | os.PathLike[str]) -> LoadReport:
    """Start training from saved weights: ours (``.safetensors``) or any released checkpoint.

    Released files go through :func:`convert_checkpoint` first, so a ``train_epoch_100.pth``, an
    MMSegmentation checkpoint or a ``.caffemodel`` can be fine-tuned directly. Tensors whose shape
    differs (a new class count) or that the file lacks (a decoder) keep their initialisation; the
    report says which. The backbone, however, must load completely: a file that does not fit it is
    the wrong file or the wrong preset, and training on would silently start from scratch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        source = convert_checkpoint(path).model
        _refuse_tensorless_differences(path, source, model)
        state = source.state_dict()
    report = load_state_dict_into(model, state, allow_partial=True)
    misfits = [k for k in report.missing if k.startswith("backbone.")]
    misfits += [k for k, _, _ in report.mismatched if k.startswith("backbone.")]
    if misfits:
        # A fresh head is the point of fine-tuning; a fresh backbone means the wrong file or preset.
        raise InputError(
            f"{path}: does not fit the model's backbone ({len(misfits)} backbone tensors missing or "
            f"mis-shaped, e.g. {misfits[:3]}); check model.preset and model.overrides"
        )
    return report
