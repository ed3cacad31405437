"""Per-pixel class probabilities for one image, following the authors' test protocol.

The protocol (hszhao/semseg ``tool/test.py``), reproduced step by step:

1. For each scale ``s`` the image is resized (bilinear, in float) so its long side is
   ``round(s * base_size)``, keeping the aspect ratio.
2. ``mode="slide"``: an image smaller than the crop is first padded symmetrically with the mean
   colour (in raw 0-255 pixel space, i.e. zero after normalisation); windows of ``crop`` pixels
   with stride ``ceil(crop * stride_rate)`` tile it, ``ceil((H - crop) / stride) + 1`` per axis, the
   last one shifted back to end at the border. ``mode="whole"``: the scaled image goes through the
   network as is.
3. Softmax per window (and per horizontal flip), averaged over the flips and the overlapping
   windows; the padding is cropped away.
4. Each scale's probabilities are resized back to the original size and averaged over scales.

Windows and their flips go through the network in batches, and the multi-scale average is a running
sum, so memory holds one full-resolution probability map plus one per-scale map at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.errors import InputError

__all__ = [
    "INFERENCE_MODES",
    "check_amp_dtype",
    "check_settings",
    "predict_probs",
    "scaled_size",
    "sliding_windows",
]

INFERENCE_MODES = ("whole", "slide")

Window = tuple[int, int, int, int]


def _axis_starts(size: int, crop: int, stride: int) -> list[int]:
    grid = math.ceil((size - crop) / stride) + 1
    return [min(i * stride + crop, size) - crop for i in range(grid)]


def sliding_windows(
    height: int, width: int, crop: int | tuple[int, int], stride: int | tuple[int, int]
) -> list[Window]:
    """Windows ``(y0, y1, x0, x1)`` covering a ``height x width`` image (already padded to >= crop).

    Row-major order, as the authors iterate. Raises ValueError when the image is smaller than the
    crop (pad it first) or the stride is not positive.
    """
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    if stride_h < 1 or stride_w < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if height < crop_h or width < crop_w:
        raise ValueError(f"image {height}x{width} is smaller than the crop {crop_h}x{crop_w}; pad it first")
    return [
        (y0, y0 + crop_h, x0, x0 + crop_w)
        for y0 in _axis_starts(height, crop_h, stride_h)
        for x0 in _axis_starts(width, crop_w, stride_w)
    ]


def scaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` with the long side ``long_side`` and the aspect kept (authors' rounding)."""
    if height > width:
        return long_side, round(long_side / float(height) * width)
    return round(long_side / float(width) * height), long_side


def _forward_probs(model: nn.Module, raw: Tensor) -> Tensor:
    """Raw 0-255 RGB ``(N, 3, h, w)`` -> softmax probabilities ``(N, C, h, w)``."""
    logits = model(model.preprocess.normalize(raw))["out"]
    if logits.shape[-2:] != raw.shape[-2:]:
        logits = F.interpolate(logits, raw.shape[-2:], mode="bilinear", align_corners=True)
    return F.softmax(logits.float(), dim=1)


def _whole(model: nn.Module, image: Tensor, flip: bool) -> Tensor:
    batch = torch.stack([image, image.flip(-1)]) if flip else image[None]
    probs = _forward_probs(model, batch)
    return (probs[0] + probs[1].flip(-1)) / 2 if flip else probs[0]


def _slide(
    model: nn.Module, image: Tensor, crop: int, stride_rate: float, flip: bool, batch_size: int
) -> Tensor:
    _, height, width = image.shape
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        mean = torch.tensor(model.preprocess.mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        padded = mean.expand(3, height + pad_h, width + pad_w).clone()
        padded[:, top : top + height, left : left + width] = image
        image = padded
    new_h, new_w = image.shape[-2:]
    stride = math.ceil(crop * stride_rate)
    windows = sliding_windows(new_h, new_w, crop, stride)
    total: Tensor | None = None
    count = torch.zeros((new_h, new_w), dtype=torch.float32, device=image.device)
    per_batch = max(1, batch_size // 2) if flip else batch_size
    for start in range(0, len(windows), per_batch):
        chunk = windows[start : start + per_batch]
        crops = torch.stack([image[:, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        if flip:
            probs = _forward_probs(model, torch.cat([crops, crops.flip(-1)]))
            probs = (probs[: len(chunk)] + probs[len(chunk) :].flip(-1)) / 2
        else:
            probs = _forward_probs(model, crops)
        if total is None:
            total = torch.zeros((probs.shape[1], new_h, new_w), dtype=torch.float32, device=image.device)
        for (y0, y1, x0, x1), window_probs in zip(chunk, probs, strict=True):
            total[:, y0:y1, x0:x1] += window_probs
            count[y0:y1, x0:x1] += 1
    assert total is not None  # sliding_windows always yields at least one window
    total /= count
    return total[:, top : top + height, left : left + width]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array (H, W, 3) RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must have shape (H, W, 3) RGB, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty: shape {image.shape}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError("image holds NaN/Inf values; expected RGB values in 0-255")
    return image.astype(np.float32, copy=False)


def _as_scales(scales: Sequence[float] | float, label: str) -> tuple[float, ...]:
    """Scales as floats; a bare number means one scale (``scales=0.5`` reads as ``(0.5,)``)."""
    if isinstance(scales, (int, float, np.number)) and not isinstance(scales, bool):
        return (float(scales),)
    if isinstance(scales, (str, bytes)):
        raise InputError(f"{label} must be a list of numbers such as (0.75, 1.0), got the string {scales!r}")
    try:
        return tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a list of numbers such as (0.75, 1.0), got {scales!r}") from None


def check_settings(
    *,
    mode: str = "whole",
    crop_size: int | None = None,
    stride_rate: float = 2 / 3,
    scales: Sequence[float] | float = (1.0,),
    base_size: int | None = None,
    batch_size: int = 4,
    option_names: bool = False,
) -> tuple[float, ...]:
    """Refuse bad inference settings once, before any model, data or image is touched.

    :func:`predict_probs` calls it for every image; callers that process many images (evaluation,
    ``pspnet predict``) call it first, so a bad setting is reported once as a setting rather than
    as a problem of the first image.

    Args:
        mode, crop_size, stride_rate, scales, base_size, batch_size: as in :func:`predict_probs`;
            ``crop_size=None`` means "default" (0 and negative values are refused, not defaulted).
        option_names: name the command-line options (``--crop-size``) instead of the arguments.

    Returns:
        The scales as a tuple of floats.

    Raises:
        InputError: one line naming the setting and the value.
    """

    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if option_names else arg

    if mode not in INFERENCE_MODES:
        raise InputError(f"{name('mode')} must be one of {INFERENCE_MODES}, got {mode!r}")
    values = _as_scales(scales, name("scales"))
    for arg, value in (("crop_size", crop_size), ("base_size", base_size), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise InputError(f"{name(arg)} must be a whole number of pixels/images, got {value!r}")
    if not values or any(not s > 0 for s in values):  # `not >` also refuses NaN
        shown = " ".join(f"{s:g}" for s in values) if option_names else str(values)
        raise InputError(f"{name('scales')} must be positive numbers, got {shown or 'none'}")
    if not 0 < stride_rate <= 1:
        raise InputError(f"{name('stride_rate')} must be in (0, 1], got {stride_rate}")
    if batch_size < 1:
        raise InputError(f"{name('batch_size')} must be >= 1, got {batch_size}")
    if crop_size is not None and crop_size < 1:
        raise InputError(f"{name('crop_size')} must be >= 1 pixel, got {crop_size}")
    if base_size is not None and base_size < 1:
        raise InputError(f"{name('base_size')} must be >= 1 pixel, got {base_size}")
    return values


def check_amp_dtype(amp_dtype: torch.dtype | None, run_device: torch.device) -> None:
    """Autocast only in bf16/fp16 and only on CUDA (never bf16 autocast on a CPU, where it is slower).

    Raises:
        InputError: another dtype, or a model that is not on a CUDA device.
    """
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise InputError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype}")
    if amp_dtype is not None and run_device.type != "cuda":
        raise InputError(f"amp_dtype={amp_dtype} needs a CUDA device (the model is on {run_device})")


def predict_probs(
    model: nn.Module,
    image: np.ndarray,
    *,
    mode: str = "whole",
    crop_size: int | None = None,
    stride_rate: float = 2 / 3,
    scales: Sequence[float] | float = (1.0,),
    base_size: int | None = None,
    flip: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 4,
    to_cpu: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """Softmax probabilities ``(C, H, W)`` (float32, CPU) for one RGB image, authors' protocol.

    Args:
        model: a PSPNet (uses ``model.preprocess`` and ``model.dataset_info``); put in eval mode
            for the call, its previous mode is restored afterwards.
        image: ``(H, W, 3)`` RGB, uint8 (or float on the 0-255 scale).
        mode: ``"whole"`` (the full scaled image at once) or ``"slide"`` (crop-size windows).
        crop_size: window side for ``"slide"``; default (None) ``model.dataset_info.crop_size``;
            must be >= 1 when given.
        stride_rate: window stride as a fraction of the crop (authors: 2/3).
        scales: multiplies ``base_size`` to give the long side per scale; probabilities averaged
            (a bare number is one scale: ``scales=0.5`` is ``(0.5,)``).
        base_size: long side at scale 1.0. Default: the image's own long side, at every scale
            (so ``scales=(0.75,)`` always runs 0.75x the image's sides). The authors resize every
            image to their dataset's base size (512 for VOC2012/ADE20K, 2048 for Cityscapes):
            pass it here to reproduce their protocol; ``pspnet eval`` does so for those datasets.
        flip: also predict the horizontally flipped input and average the probabilities.
        device: run there (the model is moved); default: where the model's parameters are.
        batch_size: windows (flips included) per forward pass in ``"slide"`` mode.
        to_cpu: return on the CPU (default); False keeps the result on the run device, which saves
            a copy when the caller takes the argmax there (evaluation on a GPU).
        amp_dtype: ``torch.bfloat16``/``torch.float16`` autocast for the network, CUDA only (a
            GPU speed option; softmax and averaging stay in float32). Never used on CPU.

    Raises:
        InputError: bad image, mode, scale, crop or batch size; ``amp_dtype`` off CUDA.
    """
    raw = _check_image(image)
    scales = check_settings(
        mode=mode,
        crop_size=crop_size,
        stride_rate=stride_rate,
        scales=scales,
        base_size=base_size,
        batch_size=batch_size,
    )
    info = getattr(model, "dataset_info", None)
    crop = 0
    if mode == "slide":
        crop = crop_size if crop_size is not None else (int(info.crop_size) if info is not None else 0)
        if crop < 1:
            raise InputError(
                "mode='slide' needs a crop size: pass crop_size (--crop-size); this model has no dataset "
                "info to take the training crop from"
            )
    height, width = raw.shape[:2]
    base = base_size if base_size is not None else (None if scales == (1.0,) else max(height, width))

    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    check_amp_dtype(amp_dtype, run_device)
    was_training = model.training
    model.eval()
    try:
        autocast = torch.autocast(run_device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        with torch.inference_mode(), autocast:
            total: Tensor | None = None
            for scale in scales:
                if base is None:
                    scaled = raw
                else:
                    new_h, new_w = scaled_size(height, width, round(scale * base))
                    if min(new_h, new_w) < 1:
                        raise InputError(f"scale {scale} shrinks the {height}x{width} image to nothing")
                    scaled = cv2.resize(raw, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
                tensor = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1))).to(run_device)
                if mode == "whole":
                    probs = _whole(model, tensor, flip)
                else:
                    probs = _slide(model, tensor, crop, stride_rate, flip, batch_size)
                if probs.shape[-2:] != (height, width):
                    probs = F.interpolate(probs[None], (height, width), mode="bilinear", align_corners=False)[
                        0
                    ]
                total = probs if total is None else total.add_(probs)
            assert total is not None
            if len(scales) > 1:
                total /= len(scales)
            return total.float().cpu() if to_cpu else total.float()
    finally:
        model.train(was_training)
