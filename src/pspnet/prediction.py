"""Python API for prediction: ``predict(model, image_or_path) -> Prediction``.

Example::

    from pspnet.io.checkpoint import load_model
    from pspnet.predict import predict

    model = load_model("pspnet50_ade20k.safetensors")
    result = predict(model, "room.jpg", mode="slide", flip=True)
    result.labels        # (H, W) class ids at the input size
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
from pspnet.errors import InputError

__all__ = ["Prediction", "load_image", "predict"]


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
    """
    return read_image(path)


def predict(
    model: nn.Module | str | os.PathLike[str],
    image: np.ndarray | str | os.PathLike[str],
    *,
    mode: str = "whole",
    crop_size: int | None = None,
    scales: Sequence[float] = (1.0,),
    base_size: int | None = None,
    flip: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 4,
    return_probs: bool = False,
    return_confidence: bool = False,
) -> Prediction:
    """Segment one image with the authors' inference protocol (see :mod:`pspnet.engine.inference`).

    Args:
        model: a PSPNet, or the path of a model file written by ``save_model``.
        image: ``(H, W, 3)`` RGB ``uint8`` array, or an image file path (grey, RGBA and 16-bit
            files are converted to 8-bit RGB).
        mode, crop_size, scales, base_size, flip, device, batch_size: as in
            :func:`pspnet.engine.inference.predict_probs`.
        return_probs: keep the ``(C, H, W)`` probabilities (memory: C x H x W floats).
        return_confidence: keep the max probability per pixel.

    Raises:
        InputError: bad arguments or image array. DataError: unreadable image file.
    """
    if isinstance(model, (str, os.PathLike)):
        from pspnet.io.checkpoint import load_model

        model = load_model(model)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a PSPNet or a model file path, got {type(model).__name__}")
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    elif isinstance(image, np.ndarray) and image.dtype != np.uint8:
        raise InputError(f"image array must be uint8 RGB (H, W, 3), got dtype {image.dtype}")
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
    )
    confidence, labels = probs.max(dim=0)
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int32
    return Prediction(
        labels=labels.cpu().numpy().astype(dtype),
        probs=probs.cpu().numpy() if return_probs else None,
        confidence=confidence.cpu().numpy() if (return_confidence or return_probs) else None,
    )
