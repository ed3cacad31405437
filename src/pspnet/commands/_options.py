"""Options shared by several commands (kept in one place so their help and checks agree).

Every check here runs before any model or data is loaded, so a mistyped option costs nothing and
is reported once, in one line naming the option (exit status 2), instead of after the work.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from pspnet.errors import InputError

__all__ = [
    "AMP_CHOICES",
    "add_amp_argument",
    "add_inference_arguments",
    "add_mask_palette_argument",
    "check_inference_options",
    "check_mask_palette",
    "check_output_dir",
    "check_output_file",
    "check_threads",
    "resolve_amp_argument",
    "resolve_device_argument",
]

AMP_CHOICES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amp",
        choices=tuple(AMP_CHOICES),
        default="off",
        help="autocast the network in bf16/fp16 on a CUDA GPU (faster; probabilities stay float32); "
        "refused on CPU (default: off)",
    )


def resolve_amp_argument(amp: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``, refusing it off CUDA before any model or data is loaded."""
    dtype = AMP_CHOICES[amp]
    if dtype is not None and torch.device(device).type != "cuda":
        raise InputError(f"--amp {amp} needs a CUDA device (got --device {device}); leave --amp off on CPU")
    return dtype


def resolve_device_argument(device: str | None, model: Path | None = None) -> str:
    """``--device`` checked before anything is loaded (None: cuda if available, else cpu).

    Without this check a typo surfaces as a traceback from deep inside the loader, or as a
    complaint about the model file. An ``.onnx`` model runs in onnxruntime, which uses a GPU only
    through its CUDA execution provider and would otherwise fall back to the CPU without a word.

    Raises:
        InputError: unknown device, a device this machine lacks, or one the ONNX runtime cannot use.
    """
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type not in _DEVICE_TYPES:
        raise InputError(f"--device {device}: only cpu, cuda[:N] and mps are supported; use --device cpu")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device} requested but no CUDA device is available; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device} requested but MPS is not available; use --device cpu")
    if model is not None and Path(model).suffix.lower() == ".onnx" and parsed.type != "cpu":
        _check_onnx_device(device, parsed, Path(model))
    return device


def _check_onnx_device(device: str, parsed: torch.device, model: Path) -> None:
    """An ONNX model runs on the GPU only through onnxruntime's CUDA provider (see ``OnnxModel``)."""
    if parsed.type != "cuda":
        raise InputError(f"--device {device} is not supported for .onnx models ({model}); use cpu or cuda")
    try:
        import onnxruntime
    except ImportError:  # opening the model reports the missing extra with its install command
        return
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise InputError(
            f"--device {device}: this onnxruntime has no CUDA execution provider, so {model} would run on "
            "the CPU; install onnxruntime-gpu, use the .safetensors model, or pass --device cpu"
        )


_OUTPUT_STRIDE_HELP = (
    "run the backbone at this output stride instead of the model's own (8 for the paper's models); "
    "same weights. A speed/accuracy trade: 16 does several times less work at a measured accuracy "
    "cost (docs/cpu_modes.md). Not for .onnx models, whose stride is fixed when exported"
)


def add_inference_arguments(parser: argparse.ArgumentParser, *, crop_help: str, base_help: str) -> None:
    """``--mode --scales --flip --crop-size --base-size --batch-size --output-stride --device --amp``
    of eval and predict (checked by :func:`check_inference_options` and
    :func:`resolve_device_argument`). Only the defaults of the crop and base size differ between
    the two commands, so their help is the caller's."""
    parser.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default="whole",
        help="whole image at once, or sliding windows of --crop-size (default: whole)",
    )
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="scales (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--crop-size", type=int, default=None, help=crop_help)
    parser.add_argument("--base-size", type=int, default=None, help=base_help)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument(
        "--output-stride", type=int, choices=(8, 16, 32), default=None, help=_OUTPUT_STRIDE_HELP
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if available); .onnx models: cpu, or cuda with "
        "onnxruntime-gpu",
    )
    add_amp_argument(parser)


def check_inference_options(args: argparse.Namespace) -> None:
    """``--mode --scales --crop-size --base-size --batch-size`` of eval/predict, checked once upfront."""
    from pspnet.engine.inference import check_settings

    check_settings(
        mode=args.mode,
        crop_size=args.crop_size,
        scales=args.scales,
        base_size=args.base_size,
        batch_size=args.batch_size,
        option_names=True,
    )


def add_mask_palette_argument(parser: argparse.ArgumentParser) -> None:
    """``--mask-palette NAME`` of verify-dataset and eval: a dataset that verifies must also be
    readable by eval, so both take RGB colour masks the same way (``open_dataset(mask_palette=)``)."""
    from pspnet.data.info import usable_mask_palettes

    parser.add_argument(
        "--mask-palette",
        default=None,
        metavar="NAME",
        help=f"read RGB colour masks with this dataset's colours ({', '.join(usable_mask_palettes())}; "
        f"voc2012 maps VOC's void border colour to 255)",
    )


def check_mask_palette(name: str | None) -> None:
    """``--mask-palette`` names a usable palette, checked before the model and the data are loaded."""
    from pspnet.data.info import colour_mask_palette

    if name is None:
        return
    try:
        colour_mask_palette(name)
    except ValueError as exc:
        raise InputError(f"--mask-palette {name}: {exc}") from None


def check_threads(threads: int | None) -> None:
    """``--threads`` must be a positive count (torch refuses others with a traceback)."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}; leave it out to use the default")


def check_output_dir(path: Path, option: str, *, given: Path | None = None) -> None:
    """Refuse an output folder that cannot be one (a file, or under a file), before the work.

    Nothing is created: the folder is made when the first result is written. ``given`` is the
    path as the user typed it, for the message (default ``path``).
    """
    shown = path if given is None else given
    for ancestor in (path, *path.parents):
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise InputError(f"{option} {shown}: {ancestor} is a file, not a folder; choose another {option}")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{option} {shown}: cannot write in {ancestor} (permission denied)")
        return


def check_output_file(path: Path, option: str) -> None:
    """Refuse an output file path that is a folder or lies under a file, before the work."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name, e.g. {path / 'report.json'}")
    check_output_dir(path.parent, option, given=path)
