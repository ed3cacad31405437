"""ONNX export with dynamic batch/height/width, its verification, an onnxruntime runner and int8.

Why the pooling rewrite: ``AdaptiveAvgPool2d(b)`` on an input whose size is unknown at export
time has no ONNX equivalent (the TorchScript exporter refuses it; exporters that accept it bake
the example's kernel size in, which is wrong for every other size not divisible by ``b``). At
export time each adaptive pooling layer is swapped for :class:`DynamicAdaptivePool2d`, which
computes PyTorch's exact bins ``start = floor(i * H / b)``, ``end = ceil((i + 1) * H / b)`` from
the runtime shape with plain tensor ops (cumsum, integer division, comparisons, matmul), so the
exported graph is exact for every input size. The user's model is never modified.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import InputError
from pspnet.io.checkpoint import atomic_write

__all__ = [
    "ONNX_FORMAT_NAME",
    "DynamicAdaptivePool2d",
    "OnnxModel",
    "export_onnx",
    "make_exportable",
    "quantize_int8",
    "verify_onnx",
]

ONNX_FORMAT_NAME = "pspnet-onnx"
_INPUT = "input"
_OUTPUT = "out"
MIN_OPSET = 11
"""Oldest opset that expresses the exact dynamic pooling (``CumSum``) and the resizes."""


def _bin_weights(length_ref: Tensor, bins: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Membership mask ``(bins, L)`` (bool) and bin sizes ``(bins, 1)`` for an axis of length L.

    ``length_ref`` is any 1-D tensor of length L: its length is read through ``cumsum`` of ones,
    so tracing records a shape-dependent computation instead of a constant.
    """
    index = torch.ones_like(length_ref, dtype=torch.int64).cumsum(0)  # 1..L
    length = index[-1:]  # (1,) tensor holding L
    index = index - 1  # 0..L-1
    i = torch.arange(bins, dtype=torch.int64, device=length_ref.device).unsqueeze(1)  # (b, 1)
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length + (bins - 1), bins, rounding_mode="floor")
    mask = (index.unsqueeze(0) >= start) & (index.unsqueeze(0) < end)
    return mask, (end - start).to(dtype)


class DynamicAdaptivePool2d(nn.Module):
    """Exact ``adaptive_{avg,max}_pool2d(x, bins)`` written with ops that trace dynamically.

    Average: ``P_h @ x @ P_w^T`` where ``P`` holds ``1 / bin size`` on each bin's rows/columns.
    Max: a masked max over rows, then over columns (the max over a rectangle is separable).
    """

    def __init__(self, bins: int | tuple[int, int], mode: str = "avg") -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        self.bins = (bins, bins) if isinstance(bins, int) else (int(bins[0]), int(bins[1]))
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        bins_h, bins_w = self.bins
        mask_h, size_h = _bin_weights(x[0, 0, :, 0], bins_h, x.dtype)
        mask_w, size_w = _bin_weights(x[0, 0, 0, :], bins_w, x.dtype)
        if self.mode == "avg":
            pool_h = mask_h.to(x.dtype) / size_h  # (bh, H)
            pool_w = mask_w.to(x.dtype) / size_w  # (bw, W)
            return torch.matmul(torch.matmul(pool_h, x), pool_w.transpose(0, 1))
        low = torch.finfo(x.dtype).min
        fill_h = torch.where(mask_h, 0.0, low).to(x.dtype)  # (bh, H)
        rows = (x.unsqueeze(2) + fill_h[:, :, None]).amax(dim=3)  # (N, C, bh, W)
        fill_w = torch.where(mask_w, 0.0, low).to(x.dtype)  # (bw, W)
        return (rows.unsqueeze(3) + fill_w).amax(dim=4)  # (N, C, bh, bw)


def _output_size(module: nn.Module) -> tuple[int, int]:
    size = module.output_size
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if any(s is None for s in pair):
        raise InputError(f"cannot export {module}: an output size of None (keep input size) is not supported")
    return int(pair[0]), int(pair[1])


def make_exportable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose adaptive pooling layers export exactly to ONNX."""
    exportable = copy.deepcopy(model).eval()
    for name, module in list(exportable.named_modules()):
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            mode = "avg" if isinstance(module, nn.AdaptiveAvgPool2d) else "max"
            parent_name, _, child = name.rpartition(".")
            parent = exportable.get_submodule(parent_name) if parent_name else exportable
            setattr(parent, child, DynamicAdaptivePool2d(_output_size(module), mode))
    return exportable


class _LogitsOnly(nn.Module):
    """Exported graph: one input ``input`` (N,3,H,W) normalised, one output ``out`` (N,C,H,W)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def _metadata(model: nn.Module) -> dict[str, str]:
    config = getattr(model, "config", None)
    info = getattr(model, "dataset_info", None)
    preprocess = getattr(model, "preprocess", PYTORCH_PREPROCESS)
    return {
        "format": ONNX_FORMAT_NAME,
        "preset": str(getattr(model, "preset_name", "custom")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "config": json.dumps(config.to_dict()) if config is not None else "",
        "preprocess": json.dumps(preprocess.to_dict()),
        "dataset": json.dumps(info.to_dict()) if info is not None else "",
    }


def _require(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise InputError(
            f"{module} is not installed; install the ONNX extras: pip install 'pspnet[onnx]' "
            "(onnx and onnxruntime)"
        ) from exc


def max_opset() -> int:
    """Newest opset the installed torch exporter writes (23 with torch 2.9+)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # private module moved: the TorchScript exporter's floor
        return 17


def check_opset(opset: int) -> None:
    """Refuse an opset the export cannot write, in one line (torch would dump its graph instead)."""
    newest = max_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise InputError(
            f"opset must be an integer from {MIN_OPSET} (dynamic resize and pooling need it) to {newest} "
            f"(the newest this torch {torch.__version__} writes), got {opset!r}"
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic: bool = True,
    example_size: tuple[int, int] = (129, 129),
) -> Path:
    """Write ``model`` as ONNX: input ``input`` (N,3,H,W) normalised -> output ``out`` logits.

    Uses the TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``; the pooling
    layers are made shape-generic first (see the module docstring). The config, preprocessing and
    label space go into the file's ``metadata_props`` so :class:`OnnxModel` can rebuild the
    prediction pipeline from the ONNX file alone.

    Args:
        model: a PSPNet (any mode; it is exported in eval mode, without the auxiliary head).
        path: output file; its folder is created.
        opset: ONNX opset, :data:`MIN_OPSET` to :func:`max_opset` (17 by default).
        dynamic: dynamic batch, height and width; False fixes them to ``example_size``, batch 1
            (:class:`OnnxModel` then runs larger batches one image at a time and refuses other sizes).
        example_size: the tracing input's ``(H, W)``.

    The output's class dimension is written as the fixed number it is (only batch, height and
    width are dynamic), so consumers that need a static channel count (TensorRT, shape inference)
    get it.

    Raises:
        InputError: opset out of range, ONNX not installed.
    """
    check_opset(opset)
    onnx = _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    example = torch.randn(1, 3, *example_size, device=param.device, dtype=param.dtype)
    wrapper = _LogitsOnly(make_exportable(model)).eval()
    dynamic_axes = None
    if dynamic:
        axes = {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {_INPUT: axes, _OUTPUT: axes}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # Tracer warnings about Python bools in the input checks: they hold for every valid input.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                tmp,
                opset_version=opset,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        num_classes = getattr(model, "num_classes", None)
        if isinstance(num_classes, int):
            channel = proto.graph.output[0].type.tensor_type.shape.dim[1]
            channel.ClearField("dim_param")
            channel.dim_value = num_classes
        for key, value in _metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    # through a temporary file: a failed export (or a full disk) never leaves a partial .onnx
    return atomic_write(path, write)


def _session(
    path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
):
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or [
        "CPUExecutionProvider"
    ]
    return ort.InferenceSession(str(path), options, providers=chosen)


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    sizes: Iterable[tuple[int, int]] = ((129, 129), (97, 129), (128, 160)),
    *,
    batch: int = 1,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Max abs difference of the ONNX logits from the PyTorch eval-mode logits, per ``(H, W)``."""
    session = _session(path, threads=torch.get_num_threads())
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    diffs: dict[tuple[int, int], float] = {}
    try:
        for height, width in sizes:
            x = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                expected = model(x.to(device))["out"].float().cpu().numpy()
            got = session.run([_OUTPUT], {_INPUT: x.numpy()})[0]
            if got.shape != expected.shape:
                raise RuntimeError(f"{path}: ONNX output {got.shape} != PyTorch output {expected.shape}")
            diffs[(int(height), int(width))] = float(np.abs(got - expected).max())
    finally:
        model.train(was_training)
    return diffs


class OnnxModel(nn.Module):
    """An exported ``.onnx`` file that quacks like our PSPNet for prediction and evaluation.

    ``model(x)`` returns ``{"out": logits}`` on ``x``'s device; ``num_classes``, ``preprocess``,
    ``dataset_info``, ``config`` and ``preset_name`` come from the metadata written by
    :func:`export_onnx`. A zero-size parameter anchors the device so code that asks
    ``next(model.parameters()).device`` or calls ``model.to(device)`` / ``model.eval()`` works;
    on ``cuda`` the CUDA execution provider is used when onnxruntime has it.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: ONNX model file not found; export one with 'pspnet export'")
        self.threads = threads
        self._anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        try:
            self._sessions = {"cpu": _session(self.path, threads)}
        except InputError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InputError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        meta = self._sessions["cpu"].get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT_NAME:
            raise InputError(
                f"{self.path}: ONNX file without pspnet metadata; export it with 'pspnet export' so the "
                "preprocessing and class count travel with it"
            )
        self.metadata = dict(meta)
        self.preset_name = meta.get("preset", "custom")
        self.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
        self.dataset_info = (
            DatasetInfo.from_dict(json.loads(meta["dataset"])) if meta.get("dataset") else None
        )
        self.config = None
        if meta.get("config"):
            from pspnet.models.pspnet import PSPNetConfig

            self.config = PSPNetConfig.from_dict(json.loads(meta["config"]))
        self._num_classes = int(meta["num_classes"])
        dims = self._sessions["cpu"].get_inputs()[0].shape
        self.fixed_shape: tuple[int, ...] | None = (
            tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
        )
        """``(N, 3, H, W)`` of a model exported with ``--static`` (None: dynamic axes)."""

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _check_static(self, shape: tuple[int, ...]) -> None:
        """A static model runs only its own size: refuse others in one line with what works instead."""
        fixed = self.fixed_shape
        if fixed is None or (tuple(shape[1:]) == fixed[1:] and shape[0] % fixed[0] == 0):
            return
        if tuple(shape[1:]) != fixed[1:] and fixed[2] == fixed[3]:
            how = (
                f"run it with --mode slide --crop-size {fixed[2]} (Python: mode='slide', "
                f"crop_size={fixed[2]}), or re-export without --static"
            )
        else:
            how = "re-export without --static for dynamic batch and size"
        raise InputError(
            f"{self.path}: static ONNX model (exported with --static) takes only {'x'.join(map(str, fixed))} "
            f"inputs (batch x channels x height x width), got {'x'.join(map(str, shape))}; {how}"
        )

    def _session_for(self, device: torch.device) -> Any:
        key = "cuda" if device.type == "cuda" else "cpu"
        if key not in self._sessions:
            self._sessions[key] = _session(self.path, self.threads, ["CUDAExecutionProvider"])
        return self._sessions[key]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check_static(tuple(x.shape))
        session = self._session_for(x.device)
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        step = self.fixed_shape[0] if self.fixed_shape is not None else len(array)
        # a static model's batch is fixed: larger batches (flips, windows) run in chunks of it
        parts = [session.run([_OUTPUT], {_INPUT: array[i : i + step]})[0] for i in range(0, len(array), step)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return {"out": torch.from_numpy(out).to(x.device)}


def _calibration_batch(index: int, image: Any) -> np.ndarray:
    """One calibration input as ``(N, 3, H, W)`` float32, or a one-line error saying what to pass."""
    array = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else image
    if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.ndim in (3, 4):
        batch = array[None] if array.ndim == 3 else array
        if batch.shape[1] == 3:
            return np.ascontiguousarray(batch, dtype=np.float32)
    described = (
        f"{array.dtype} array of shape {array.shape}"
        if isinstance(array, np.ndarray)
        else type(image).__name__
    )
    raise InputError(
        f"calibration image {index}: expected a normalised float (3, H, W) or (N, 3, H, W) tensor, got "
        f"{described}; normalise images with model.preprocess.to_tensor(image) (from an (H, W, 3) RGB array)"
    )


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: Iterable[Tensor],
) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on normalised images.

    Honest note: on AVX2-only CPUs (no VNNI) int8 convolutions run at about the fp32 speed
    (measured 1.0x on the development machine, 97.6% argmax agreement), so this pays off only on
    CPUs with VNNI/AMX or on int8-capable accelerators. Verify accuracy on your own data.

    Args:
        onnx_path: an fp32 model from :func:`export_onnx`.
        out_path: where to write the quantized model (not ``onnx_path`` itself).
        calibration_images: normalised float ``(N, 3, H, W)`` or ``(3, H, W)`` tensors (or numpy
            arrays), a few dozen, e.g. ``model.preprocess.to_tensor(load_image(path))``.

    Raises:
        InputError: no or malformed calibration images (e.g. raw ``(H, W, 3)`` uint8 images),
            ``out_path`` equal to ``onnx_path``, onnxruntime not installed.
    """
    _require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [_calibration_batch(i, image) for i, image in enumerate(calibration_images)]
    if not batches:
        raise InputError("quantize_int8 needs at least one calibration image")
    if Path(out_path).resolve() == Path(onnx_path).resolve():
        raise InputError(f"{out_path}: is the input model itself; write the quantized model to another file")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {_INPUT: item}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name for the pre-processed graph: a fixed one could be the input or a user's file
    handle, name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".pre.onnx", dir=out_path.parent)
    os.close(handle)
    prepared = Path(name)
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        source = prepared
    except Exception:  # pre-processing is an optimisation; quantize the raw graph if it fails
        source = Path(onnx_path)
    onnx = _require("onnx")

    def write(tmp: str) -> None:
        quantize_static(
            str(source),
            tmp,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        # Keep the pspnet metadata so OnnxModel can open the quantized file too.
        original = onnx.load(str(onnx_path), load_external_data=False)
        quantized = onnx.load(tmp)
        present = {p.key for p in quantized.metadata_props}
        for prop in original.metadata_props:
            if prop.key not in present:
                entry = quantized.metadata_props.add()
                entry.key, entry.value = prop.key, prop.value
        onnx.save(quantized, tmp)

    try:
        return atomic_write(out_path, write)
    finally:
        prepared.unlink(missing_ok=True)
