"""Python API for prediction: ``predict(model, image_or_path) -> Prediction``.

Example::

    from pspnet import load_model, predict

    model = load_model("pspnet50_ade20k.safetensors")
    result = predict(model, "room.jpg", mode="slide", flip=True)
    result.labels        # (H, W) class ids at the input size

``predict("model.onnx", image)`` runs an exported model with onnxruntime, as ``pspnet predict
--model model.onnx`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pspnet.data.imageio import read_image
from pspnet.engine.inference import predict_probs
from pspnet.errors import DataError, InputError

__all__ = ["Prediction", "as_rgb_uint8", "load_image", "predict"]


@dataclass
class Prediction:
    """The result for one image, at the input image's size.

    Attributes:
        labels: ``(H, W)`` class ids, ``uint8`` for up to 256 classes, else ``int32``.
        probs: ``(C, H, W)`` float32 softmax probabilities (only with ``return_probs=True``).
        confidence: ``(H, W)`` float32 probability of the chosen class (with ``return_confidence``
            or ``return_probs``).
    """

    labels: np.ndarray
    probs: np.ndarray | None = None
    confidence: np.ndarray | None = None


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``; raises DataError naming the file.

    The dataset reader: EXIF orientation, grey/RGBA/16-bit inputs, size limits, clear errors.
    Truncated files are refused too (``check_complete``): OpenCV alone would pad a cut JPEG with
    grey and a prediction would silently cover pixels that are not in the file. The second decode
    costs far less than the network.
    """
    return read_image(path, check_complete=True)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check an image array and return it as RGB ``uint8`` ``(H, W, 3)``.

    Accepted as is: ``uint8`` ``(H, W, 3)`` RGB. Converted (as the file reader converts files):
    grey ``(H, W)`` or ``(H, W, 1)`` is repeated to three channels, and ``(H, W, 4)`` RGBA loses
    its alpha channel. Refused with :class:`InputError`: any other dtype (float arrays, NaN/Inf
    included, are ambiguous between the 0-1 and 0-255 scales; 16-bit, signed and bool arrays are
    not 8-bit colour), channel-first ``(3, H, W)`` arrays (the message says how to transpose) and
    other shapes. The caller's array is never modified.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"image must be a numpy array (H, W, 3) RGB uint8 or a file path, got {type(image).__name__}"
        )
    shape = image.shape
    if image.dtype != np.uint8:
        hint = ""
        if image.dtype.kind == "f":
            finite = bool(np.isfinite(image).all())
            hint = (
                ("; it also holds NaN/Inf values" if not finite else "")
                + "; float images are ambiguous (0-1 or 0-255?): convert with "
                "np.clip(x * 255, 0, 255).astype(np.uint8) for 0-1 data"
            )
        elif image.dtype == np.uint16:
            hint = "; convert 16-bit data with (x >> 8).astype(np.uint8)"
        raise InputError(
            f"image array must be uint8 RGB (H, W, 3) with values 0-255, got dtype {image.dtype}{hint}"
        )
    if image.ndim == 2 or (image.ndim == 3 and shape[2] == 1):
        grey = image if image.ndim == 2 else image[:, :, 0]
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.ndim == 3 and shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and shape[2] == 3:
        return image
    if image.ndim == 3 and shape[0] in (1, 3, 4):
        raise InputError(
            f"image array has shape {shape}, which looks channel-first; pass (H, W, 3): "
            "image.transpose(1, 2, 0)"
        )
    raise InputError(f"image array must have shape (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA, got {shape}")


def predict(
    model: nn.Module | str | os.PathLike[str],
    image: np.ndarray | str | os.PathLike[str],
    *,
    mode: str = "whole",
    crop_size: int | None = None,
    scales: Sequence[float] | float = (1.0,),
    base_size: int | None = None,
    flip: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 4,
    return_probs: bool = False,
    return_confidence: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> Prediction:
    """Segment one image with the authors' inference protocol (see :mod:`pspnet.engine.inference`).

    Args:
        model: a PSPNet (or an :class:`~pspnet.export.OnnxModel`), or the path of a model file:
            a ``.safetensors`` written by ``save_model`` / ``pspnet convert``, or an ``.onnx``
            written by ``pspnet export`` (what ``pspnet predict --model`` accepts). Released
            checkpoints (``.pth``, ``.caffemodel``) are refused with the ``pspnet convert`` command
            that imports them.
        image: ``(H, W, 3)`` RGB ``uint8`` array (grey and RGBA arrays are converted, other
            dtypes and layouts refused: see :func:`as_rgb_uint8`), or an image file path (grey,
            RGBA and 16-bit files are converted to 8-bit RGB; truncated files are refused).
        mode, crop_size, scales, base_size, flip, device, batch_size, amp_dtype: as in
            :func:`pspnet.engine.inference.predict_probs` (``amp_dtype``: bf16/fp16, CUDA only).
        return_probs: keep the ``(C, H, W)`` probabilities (memory: C x H x W floats).
        return_confidence: keep the max probability per pixel.

    Images smaller than the network's minimum (8x8 at output stride 8) are refused in
    ``mode="whole"`` with an InputError naming the file; ``mode="slide"`` pads them with the mean
    colour to the crop size (the authors' protocol) and predicts them.

    Raises:
        InputError: bad arguments or image array, or an image too small for ``mode="whole"``.
        DataError: unreadable, truncated or oversized image file, or a folder (the message names it).
    """
    if isinstance(model, (str, os.PathLike)):
        from pspnet.io.checkpoint import open_model

        model = open_model(model)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a PSPNet or a model file path, got {type(model).__name__}")
    missing = [name for name in ("preprocess", "num_classes") if not hasattr(model, name)]
    if missing:
        raise InputError(
            f"model must be a pspnet model (pspnet.create_model, pspnet.load_model or an OnnxModel): a "
            f"{type(model).__name__} has no {' or '.join(missing)}, which say how to normalise the image "
            "and how many classes to expect"
        )
    source = None
    if isinstance(image, (str, os.PathLike)):
        source = image
        if os.path.isdir(image):
            raise DataError(
                f"{image}: is a folder, not an image file (pspnet predict on the command line takes folders)"
            )
        image = load_image(image)
    else:
        image = as_rgb_uint8(image)
    try:
        probs = predict_probs(
            model,
            image,
            mode=mode,
            crop_size=crop_size,
            scales=scales,
            base_size=base_size,
            flip=flip,
            device=device,
            batch_size=batch_size,
            to_cpu=False,  # reduce on the run device; copy only what is returned (C x smaller)
            amp_dtype=amp_dtype,
        )
    except InputError:
        raise
    except ValueError as exc:  # the network refused the input, e.g. smaller than its minimum size
        where = f"{source}: " if source is not None else ""
        hint = (  # read by Python and command-line users alike (pspnet predict reuses it)
            "; use the slide mode (mode='slide' in Python, --mode slide on the command line), which pads "
            "small images to the crop size"
            if mode == "whole"
            else ""
        )
        raise InputError(f"{where}{exc}{hint}") from exc
    confidence, labels = probs.max(dim=0)
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int32
    return Prediction(
        labels=labels.cpu().numpy().astype(dtype),
        probs=probs.cpu().numpy() if return_probs else None,
        confidence=confidence.cpu().numpy() if (return_confidence or return_probs) else None,
    )
