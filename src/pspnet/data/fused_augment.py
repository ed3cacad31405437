"""The authors' training augmentation, computed only where the crop lands.

The step-by-step pipeline (:mod:`pspnet.data.transforms`) scales, rotates, blurs and flips the
*whole* image before cropping. With Cityscapes images at up to 2x scale, that means warping a
2048x4096 float image to keep a 713x713 window: most of a data-loader worker's time went there.

:class:`FusedTrainAugment` draws the same random numbers in the same order, so for a given
generator it picks the same scale, angle, blur, flip and crop window as the step-by-step
pipeline. It then works backwards from the window: which pixels of the rotated image it needs
(plus the blur's margin), which pixels of the scaled image those need, and which source pixels
those need, and computes only those. The output differs from the step-by-step one only by
OpenCV's fixed-point coordinate rounding (1/32 pixel) in the warps:

- no scale and no rotation: identical (slices, the same blur, the same flip);
- rotation: the same ``warpAffine`` restricted to a window, borders as before (mean colour for
  the image, the ignore label for the mask);
- scale: the image is resampled by ``warpAffine`` with ``cv2.resize``'s half-pixel mapping and
  edge replication instead of by ``cv2.resize``; the mask uses ``cv2.resize``'s own
  nearest-neighbour index rule, so its labels are exact;
- blur: applied to the window plus the kernel's margin, with the reflected border only where the
  window meets the image's edge, as in the whole-image blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pspnet.data.transforms import (
    RandomCrop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomRotate,
    RandomScale,
    ScaleDraw,
    _cv_mask,
)
from pspnet.errors import InputError

__all__ = ["FusedTrainAugment"]

Span = tuple[int, int]
"""Half-open pixel range ``[start, stop)`` along one axis."""

_SAMPLE_MARGIN = 2
"""Extra source pixels kept around a mapped window: bilinear reads one neighbour, and the
fixed-point coordinates may round one pixel either way."""


def _grow(span: Span, margin: int, size: int) -> Span:
    return max(span[0] - margin, 0), min(span[1] + margin, size)


def _mapped_span(lo: float, hi: float, size: int) -> Span:
    """Source pixels needed for coordinates in ``[lo, hi]``, clipped to the image."""
    return max(math.floor(lo) - _SAMPLE_MARGIN, 0), min(math.ceil(hi) + _SAMPLE_MARGIN + 1, size)


def _fill_like(shape: tuple[int, ...], fill: tuple[float, ...], dtype: np.dtype) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    out[...] = fill[: shape[2]] if len(shape) == 3 else fill[0]
    return out


@dataclass(frozen=True)
class FusedTrainAugment:
    """Scale, rotate, blur, flip and crop in one pass over the pixels the crop needs.

    Takes the step objects themselves (``None`` drops a step), so both pipelines share their
    parameters and random draws. Input: an image ``(H, W, C)`` of any dtype and a mask ``(H, W)``;
    output: a float32 image and a mask of the crop size, as the step-by-step pipeline returns.
    """

    crop: RandomCrop
    scale: RandomScale | None = None
    rotate: RandomRotate | None = None
    blur: RandomGaussianBlur | None = None
    flip: RandomHorizontalFlip | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        h, w = mask.shape
        if image.shape[:2] != (h, w):
            raise InputError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
        mask = _cv_mask(mask)  # once, on the whole mask, as the step-by-step pipeline does
        scaled = self.scale.draw(rng, h, w) if self.scale is not None else None
        out_h, out_w = scaled.size if scaled is not None else (h, w)
        angle = self.rotate.draw(rng) if self.rotate is not None else None
        blur = self.blur is not None and self.blur.draw(rng)
        flip = self.flip is not None and self.flip.draw(rng)
        crop = self.crop.draw(rng, out_h, out_w)

        # The window in the flipped, rotated image (before padding): rows [a, a + crop_h) and
        # columns [b, b + crop_w); the part inside the image is what has to be computed.
        crop_h, crop_w = self.crop._hw
        a, b = crop.top - crop.borders[0], crop.left - crop.borders[2]
        rows = (max(a, 0), min(a + crop_h, out_h))
        cols_flipped = (max(b, 0), min(b + crop_w, out_w))
        cols = (out_w - cols_flipped[1], out_w - cols_flipped[0]) if flip else cols_flipped

        margin = self.blur.kernel // 2 if blur else 0
        region_rows, region_cols = _grow(rows, margin, out_h), _grow(cols, margin, out_w)
        img, msk = self._rotated_region(image, mask, scaled, angle, region_rows, region_cols)
        if blur:
            img = self.blur.apply(img)
        top, left = rows[0] - region_rows[0], cols[0] - region_cols[0]
        img = img[top : top + rows[1] - rows[0], left : left + cols[1] - cols[0]]
        msk = msk[top : top + rows[1] - rows[0], left : left + cols[1] - cols[0]]
        if flip:
            img, msk = img[:, ::-1], msk[:, ::-1]
        if img.shape[:2] == (crop_h, crop_w):
            return np.ascontiguousarray(img), np.ascontiguousarray(msk)

        out_img = _fill_like((crop_h, crop_w, *img.shape[2:]), self.crop.fill, np.dtype(np.float32))
        out_msk = np.full((crop_h, crop_w), self.crop.ignore_index, dtype=msk.dtype)
        dst = (slice(rows[0] - a, rows[1] - a), slice(cols_flipped[0] - b, cols_flipped[1] - b))
        out_img[dst], out_msk[dst] = img, msk
        return out_img, out_msk

    def _rotated_region(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        scaled: ScaleDraw | None,
        angle: float | None,
        rows: Span,
        cols: Span,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows/cols of the scaled-then-rotated image (float32 image, OpenCV-ready mask)."""
        if angle is None:
            return self._scaled_region(image, mask, scaled, rows, cols)
        assert self.rotate is not None
        out_h, out_w = scaled.size if scaled is not None else mask.shape
        inverse = cv2.invertAffineTransform(cv2.getRotationMatrix2D((out_w / 2, out_h / 2), angle, 1))
        corners = np.array([[x, y, 1.0] for x in (cols[0], cols[1] - 1) for y in (rows[0], rows[1] - 1)])
        xs, ys = (corners @ inverse.T).T
        src_rows = _mapped_span(ys.min(), ys.max(), out_h)
        src_cols = _mapped_span(xs.min(), xs.max(), out_w)
        size = (cols[1] - cols[0], rows[1] - rows[0])
        if src_rows[0] >= src_rows[1] or src_cols[0] >= src_cols[1]:  # only the rotation's fill
            channels = image.shape[2:]
            return (
                _fill_like((size[1], size[0], *channels), self.rotate.fill, np.dtype(np.float32)),
                np.full((size[1], size[0]), self.rotate.ignore_index, dtype=mask.dtype),
            )
        src_img, src_msk = self._scaled_region(image, mask, scaled, src_rows, src_cols)
        # Region pixel (x, y) is rotated-image pixel (x + cols[0], y + rows[0]); its source is
        # scaled-image pixel inverse @ that, i.e. (inverse @ that) - (src_cols[0], src_rows[0]).
        local = inverse.copy()
        local[:, 2] += inverse[:, :2] @ np.array([cols[0], rows[0]]) - np.array([src_cols[0], src_rows[0]])
        fill = tuple(float(v) for v in self.rotate.fill)
        return (
            cv2.warpAffine(
                src_img, local, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=fill
            ),
            cv2.warpAffine(
                src_msk,
                local,
                size,
                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                borderValue=self.rotate.ignore_index,
            ),
        )

    @staticmethod
    def _scaled_region(
        image: np.ndarray, mask: np.ndarray, scaled: ScaleDraw | None, rows: Span, cols: Span
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows/cols of the scaled image, resampled as ``cv2.resize`` does."""
        if scaled is None or scaled.size == mask.shape:  # cv2.resize copies an unchanged size
            region = (slice(*rows), slice(*cols))
            return image[region].astype(np.float32), mask[region]
        h, w = mask.shape
        fy, fx = scaled.factors
        # Mask, INTER_NEAREST: cv2.resize takes source index floor(dst / factor), clamped.
        ys = np.minimum(np.floor(np.arange(*rows) * (1.0 / fy)).astype(np.intp), h - 1)
        xs = np.minimum(np.floor(np.arange(*cols) * (1.0 / fx)).astype(np.intp), w - 1)
        msk = mask[ys][:, xs]
        # Image, INTER_LINEAR: source coordinate (dst + 0.5) / factor - 0.5, edges replicated.
        src_rows = _mapped_span((rows[0] + 0.5) / fy - 0.5, (rows[1] - 0.5) / fy - 0.5, h)
        src_cols = _mapped_span((cols[0] + 0.5) / fx - 0.5, (cols[1] - 0.5) / fx - 0.5, w)
        src = image[slice(*src_rows), slice(*src_cols)].astype(np.float32)
        inverse = np.array(
            [
                [1.0 / fx, 0.0, (cols[0] + 0.5) / fx - 0.5 - src_cols[0]],
                [0.0, 1.0 / fy, (rows[0] + 0.5) / fy - 0.5 - src_rows[0]],
            ]
        )
        img = cv2.warpAffine(
            src,
            inverse,
            (cols[1] - cols[0], rows[1] - rows[0]),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return img, msk
