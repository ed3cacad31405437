"""Paired image + mask augmentation, matching the authors' ``util/transform.py`` step for step.

Every transform is a callable ``t(image, mask, rng) -> (image, mask)``. Randomness comes only from
the ``numpy.random.Generator`` passed in (the dataset derives it from ``(seed, epoch, index)``), so
an augmented sample is the same whatever the worker, rank or process start method.

Faithful details (hszhao/semseg): the image is converted to float32 before augmenting; scaling
uses one factor for both axes (image ``INTER_LINEAR``, mask ``INTER_NEAREST``); rotation is about
the centre, keeps the size, pads the image with the mean colour and the mask with the ignore
label; the 5x5 Gaussian blur (sigma from the kernel size) touches the image only; the crop pads
symmetrically (extra pixel at the bottom/right) before taking a random window. The mask is never
interpolated with anything but nearest neighbour, so no new label values appear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor

from pspnet.data.info import IGNORE_INDEX
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import InputError

__all__ = [
    "Compose",
    "PairedTransform",
    "RandomCrop",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "RandomRotate",
    "RandomScale",
    "ToFloat",
    "ToTensor",
    "eval_transforms",
    "train_transforms",
]

PairedTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
"""``t(image (H,W,3), mask (H,W), rng) -> (image, mask)``."""


def _cv_mask(mask: np.ndarray) -> np.ndarray:
    """A dtype OpenCV can warp/resize (it has no int64 support); values are preserved exactly."""
    if mask.dtype in (np.uint8, np.uint16, np.int16):
        return mask
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return mask.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return mask.astype(np.uint16)
    raise InputError(f"mask values must lie in [0, 65535] for augmentation, got [{lo}, {hi}]")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) <= 0 or int(w) <= 0:
        raise InputError(f"crop size must be positive, got {size}")
    return int(h), int(w)


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise InputError(f"probability must be in [0, 1], got {p}")


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order, threading the same generator through all of them."""

    transforms: tuple[PairedTransform, ...]

    def __init__(self, transforms: Sequence[PairedTransform]) -> None:
        object.__setattr__(self, "transforms", tuple(transforms))

    def __call__(self, image, mask, rng):  # type: ignore[no-untyped-def]
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


@dataclass(frozen=True)
class ToFloat:
    """Image to float32 (0-255), as the authors do before augmenting: no rounding in later steps."""

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        return image.astype(np.float32, copy=False), mask


@dataclass(frozen=True)
class RandomScale:
    """Resize by one factor drawn uniformly from ``[low, high)`` (same factor on both axes)."""

    low: float = 0.5
    high: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise InputError(f"RandomScale needs 0 < low <= high, got ({self.low}, {self.high})")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        factor = self.low + (self.high - self.low) * rng.random()
        h, w = mask.shape
        if round(h * factor) < 1 or round(w * factor) < 1:  # tiny inputs: keep at least one pixel
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(_cv_mask(mask), size, interpolation=cv2.INTER_NEAREST)
            return image, mask
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(_cv_mask(mask), None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        return image, mask


@dataclass(frozen=True)
class RandomRotate:
    """With probability ``p``, rotate about the centre by an angle from ``[low, high)`` degrees.

    The output keeps the input size; uncovered corners get ``fill`` (image, the mean colour in
    the authors' recipe) and ``ignore_index`` (mask), so they cost nothing in the loss.
    """

    degrees: tuple[float, float] = (-10.0, 10.0)
    p: float = 0.5
    fill: tuple[float, float, float] = PYTORCH_PREPROCESS.mean
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        _check_p(self.p)
        if self.degrees[0] > self.degrees[1]:
            raise InputError(f"RandomRotate needs low <= high degrees, got {self.degrees}")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if rng.random() >= self.p:
            return image, mask
        angle = self.degrees[0] + (self.degrees[1] - self.degrees[0]) * rng.random()
        h, w = mask.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        image = cv2.warpAffine(
            image,
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=tuple(float(v) for v in self.fill),
        )
        mask = cv2.warpAffine(
            _cv_mask(mask),
            matrix,
            (w, h),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.ignore_index,
        )
        return image, mask


@dataclass(frozen=True)
class RandomGaussianBlur:
    """With probability ``p``, Gaussian-blur the image (``kernel`` x ``kernel``); the mask is untouched."""

    kernel: int = 5
    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p(self.p)
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise InputError(f"blur kernel must be a positive odd number, got {self.kernel}")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.p:
            image = cv2.GaussianBlur(image, (self.kernel, self.kernel), 0)
        return image, mask


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """With probability ``p``, mirror image and mask left-right."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p(self.p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.p:
            image = np.ascontiguousarray(image[:, ::-1])
            mask = np.ascontiguousarray(mask[:, ::-1])
        return image, mask


@dataclass(frozen=True)
class RandomCrop:
    """Crop to ``size`` (int or ``(h, w)``), padding first when the input is smaller.

    Padding is split evenly (the odd pixel goes to the bottom/right), image with ``fill``, mask
    with ``ignore_index``. The window position is uniform over all valid offsets, or centred when
    ``center=True`` (the authors' validation crop).
    """

    size: int | tuple[int, int]
    fill: tuple[float, float, float] = PYTORCH_PREPROCESS.mean
    ignore_index: int = IGNORE_INDEX
    center: bool = False
    _hw: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hw", _pair(self.size))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        crop_h, crop_w = self._hw
        h, w = mask.shape
        pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            borders = (top, pad_h - top, left, pad_w - left)
            image = cv2.copyMakeBorder(
                image, *borders, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in self.fill)
            )
            mask = cv2.copyMakeBorder(_cv_mask(mask), *borders, cv2.BORDER_CONSTANT, value=self.ignore_index)
            h, w = mask.shape
        if self.center:
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
        else:
            top = int(rng.integers(0, h - crop_h + 1))
            left = int(rng.integers(0, w - crop_w + 1))
        return image[top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]


@dataclass(frozen=True)
class ToTensor:
    """Image to a normalised float32 ``(3, H, W)`` tensor via ``preprocess``; mask to int64."""

    preprocess: Preprocess = PYTORCH_PREPROCESS

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor]:
        return self.preprocess.to_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


def train_transforms(
    crop_size: int | tuple[int, int],
    preprocess: Preprocess = PYTORCH_PREPROCESS,
    scale: tuple[float, float] | None = (0.5, 2.0),
    rotate: tuple[float, float] | None = (-10, 10),
    blur: bool = True,
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The authors' training pipeline: scale, rotate, blur, flip, crop, normalise.

    Pass ``scale=None`` / ``rotate=None`` / ``blur=False`` / ``flip=False`` to drop a step.
    Padding uses ``preprocess.mean``, which becomes exactly zero after normalisation.
    """
    fill = preprocess.mean
    steps: list[PairedTransform] = [ToFloat()]
    if scale is not None:
        steps.append(RandomScale(*scale))
    if rotate is not None:
        steps.append(RandomRotate((float(rotate[0]), float(rotate[1])), 0.5, fill, ignore_index))
    if blur:
        steps.append(RandomGaussianBlur(5, 0.5))
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    steps.append(RandomCrop(crop_size, fill, ignore_index))
    steps.append(ToTensor(preprocess))
    return Compose(steps)


def eval_transforms(preprocess: Preprocess = PYTORCH_PREPROCESS) -> Compose:
    """Whole image, no augmentation: just normalise (evaluation resizes/slides on its own)."""
    return Compose([ToTensor(preprocess)])
