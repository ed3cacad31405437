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
    """Apply transforms in order, threading the same generator through all of them.

    ``compact_masks=True`` says every step accepts a mask in any unsigned integer type, so a
    dataset may hand it a uint8 mask instead of an int64 copy (all of this module's steps do;
    a user's step might do arithmetic that needs int64, hence off by default).
    """

    transforms: tuple[PairedTransform, ...]
    compact_masks: bool = False

    def __init__(self, transforms: Sequence[PairedTransform], compact_masks: bool = False) -> None:
        object.__setattr__(self, "transforms", tuple(transforms))
        object.__setattr__(self, "compact_masks", bool(compact_masks))

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
class ScaleDraw:
    """One drawn scaling: output ``size`` (h, w) and the per-axis ``factors`` (y, x) OpenCV uses.

    ``by_size`` marks the tiny-input case, resized to an explicit size (factors = size ratios)
    rather than by the drawn factor.
    """

    size: tuple[int, int]
    factors: tuple[float, float]
    by_size: bool


@dataclass(frozen=True)
class RandomScale:
    """Resize by one factor drawn uniformly from ``[low, high)`` (same factor on both axes)."""

    low: float = 0.5
    high: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise InputError(f"RandomScale needs 0 < low <= high, got ({self.low}, {self.high})")

    def draw(self, rng: np.random.Generator, h: int, w: int) -> ScaleDraw:
        """The factor and the output size for an ``h`` x ``w`` input (one generator draw)."""
        factor = self.low + (self.high - self.low) * rng.random()
        out_h, out_w = round(h * factor), round(w * factor)
        if (out_h, out_w) == (h, w):  # cv2.resize copies when the size does not change
            return ScaleDraw((h, w), (1.0, 1.0), by_size=False)
        if out_h < 1 or out_w < 1:  # tiny inputs: keep at least one pixel, OpenCV scales by size
            out_h, out_w = max(1, out_h), max(1, out_w)
            return ScaleDraw((out_h, out_w), (out_h / h, out_w / w), by_size=True)
        return ScaleDraw((out_h, out_w), (factor, factor), by_size=False)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        drawn = self.draw(rng, *mask.shape)
        if drawn.by_size:
            size = (drawn.size[1], drawn.size[0])
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(_cv_mask(mask), size, interpolation=cv2.INTER_NEAREST)
            return image, mask
        factor = drawn.factors[0]
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

    def draw(self, rng: np.random.Generator) -> float | None:
        """The angle in degrees, or None when this sample is not rotated (one or two draws)."""
        if rng.random() >= self.p:
            return None
        return self.degrees[0] + (self.degrees[1] - self.degrees[0]) * rng.random()

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        angle = self.draw(rng)
        if angle is None:
            return image, mask
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

    def draw(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.p)

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (self.kernel, self.kernel), 0)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if self.draw(rng):
            image = self.apply(image)
        return image, mask


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """With probability ``p``, mirror image and mask left-right."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p(self.p)

    def draw(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if self.draw(rng):
            image = np.ascontiguousarray(image[:, ::-1])
            mask = np.ascontiguousarray(mask[:, ::-1])
        return image, mask


@dataclass(frozen=True)
class CropDraw:
    """One drawn crop: ``borders`` (top, bottom, left, right) padded first, then the window's
    top-left corner in the padded image."""

    borders: tuple[int, int, int, int]
    top: int
    left: int


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

    def draw(self, rng: np.random.Generator, h: int, w: int) -> CropDraw:
        """Padding and window for an ``h`` x ``w`` input (two draws unless centred)."""
        crop_h, crop_w = self._hw
        pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
        h, w = h + pad_h, w + pad_w
        if self.center:
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
        else:
            top = int(rng.integers(0, h - crop_h + 1))
            left = int(rng.integers(0, w - crop_w + 1))
        return CropDraw((pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2), top, left)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        crop_h, crop_w = self._hw
        drawn = self.draw(rng, *mask.shape)
        if any(drawn.borders):
            image = cv2.copyMakeBorder(
                image, *drawn.borders, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in self.fill)
            )
            mask = cv2.copyMakeBorder(
                _cv_mask(mask), *drawn.borders, cv2.BORDER_CONSTANT, value=self.ignore_index
            )
        top, left = drawn.top, drawn.left
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
    fused: bool = True,
) -> Compose:
    """The authors' training pipeline: scale, rotate, blur, flip, crop, normalise.

    Pass ``scale=None`` / ``rotate=None`` / ``blur=False`` / ``flip=False`` to drop a step.
    Padding uses ``preprocess.mean``, which becomes exactly zero after normalisation.

    ``fused=True`` (default) runs :class:`~pspnet.data.fused_augment.FusedTrainAugment`: the same
    draws and the same result up to OpenCV's 1/32-pixel coordinate rounding, computed only where
    the crop lands (about 7x less augmentation work per Cityscapes sample). ``fused=False`` runs
    the steps one by one over the whole image, as the authors' code does.
    """
    fill = preprocess.mean
    scale_step = RandomScale(*scale) if scale is not None else None
    rotate_step = (
        RandomRotate((float(rotate[0]), float(rotate[1])), 0.5, fill, ignore_index)
        if rotate is not None
        else None
    )
    blur_step = RandomGaussianBlur(5, 0.5) if blur else None
    flip_step = RandomHorizontalFlip(0.5) if flip else None
    crop_step = RandomCrop(crop_size, fill, ignore_index)
    if fused:
        from pspnet.data.fused_augment import FusedTrainAugment

        augment = FusedTrainAugment(crop_step, scale_step, rotate_step, blur_step, flip_step)
        return Compose([augment, ToTensor(preprocess)], compact_masks=True)
    steps = [ToFloat(), scale_step, rotate_step, blur_step, flip_step, crop_step, ToTensor(preprocess)]
    return Compose([step for step in steps if step is not None], compact_masks=True)


def eval_transforms(preprocess: Preprocess = PYTORCH_PREPROCESS) -> Compose:
    """Whole image, no augmentation: just normalise (evaluation resizes/slides on its own)."""
    return Compose([ToTensor(preprocess)], compact_masks=True)
