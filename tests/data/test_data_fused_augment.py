"""The fused augmentation against the step-by-step pipeline: same draws, same pixels (up to
OpenCV's 1/32-pixel coordinate rounding), same labels, on every branch (padding, tiny inputs,
rotation corners, flips, non-square crops)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspnet.data.fused_augment import FusedTrainAugment
from pspnet.data.transforms import (
    Compose,
    RandomCrop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomRotate,
    RandomScale,
    ToFloat,
    train_transforms,
)
from pspnet.errors import InputError

IGN = 255
FILL = (124.0, 116.0, 104.0)


def _pipelines(
    crop: int | tuple[int, int],
    scale: tuple[float, float] | None = (0.5, 2.0),
    degrees: tuple[float, float] | None = (-10.0, 10.0),
    p: float = 0.5,
    blur: bool = True,
    flip: bool = True,
) -> tuple[Compose, FusedTrainAugment]:
    steps = {
        "scale": RandomScale(*scale) if scale is not None else None,
        "rotate": RandomRotate(degrees, p, FILL, IGN) if degrees is not None else None,
        "blur": RandomGaussianBlur(5, p) if blur else None,
        "flip": RandomHorizontalFlip(p) if flip else None,
        "crop": RandomCrop(crop, FILL, IGN),
    }
    order = ("scale", "rotate", "blur", "flip", "crop")
    stepwise = Compose([ToFloat(), *(steps[k] for k in order if steps[k] is not None)])
    return stepwise, FusedTrainAugment(**steps)


def _smooth_sample(h: int, w: int, seed: int, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image (so a 1/32-pixel shift moves values little) and a blocky label map."""
    g = np.random.default_rng(seed)
    coarse = g.integers(0, 256, (max(h // 6, 2), max(w // 6, 2), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    labels = g.integers(0, classes, (max(h // 5, 1), max(w // 5, 1)), dtype=np.uint8)
    mask = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _assert_close(stepwise, fused, image, mask, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    ref_img, ref_mask = stepwise(image, mask, rng_a)
    out_img, out_mask = fused(image, mask, rng_b)
    # the same number of draws: the generators are in the same state afterwards
    assert rng_a.random() == rng_b.random()
    assert out_img.shape == ref_img.shape and out_mask.shape == ref_mask.shape
    assert out_img.dtype == np.float32
    diff = np.abs(out_img - ref_img.astype(np.float32))
    assert diff.mean() < 0.05 and diff.max() < 8.0, (diff.mean(), diff.max())
    mismatched = int((out_mask != ref_mask).sum())
    assert mismatched <= max(2, out_mask.size // 1000), mismatched
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {IGN}


@pytest.mark.parametrize("seed", range(12))
def test_identity_geometry_is_bit_identical(seed: int) -> None:
    """Without scale and rotation the fused path is slices, the same blur and the same flip."""
    stepwise, fused = _pipelines(48, scale=None, degrees=None)
    image, mask = _smooth_sample(60, 80, seed)
    ref = stepwise(image, mask, np.random.default_rng(seed))
    out = fused(image, mask, np.random.default_rng(seed))
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_array_equal(out[1], ref[1])


@pytest.mark.parametrize(
    ("crop", "scale", "degrees"),
    [
        (64, None, (-10.0, 10.0)),  # rotation only
        (64, (0.5, 2.0), None),  # scale only
        (64, (0.5, 2.0), (-10.0, 10.0)),  # the authors' recipe
        (300, (0.5, 2.0), (-10.0, 10.0)),  # crop larger than the image: padding on both axes
        ((40, 150), (0.5, 1.5), (-10.0, 10.0)),  # non-square, padding on one axis only
        (64, (1.0, 1.0), (80.0, 100.0)),  # near-quarter turns: windows in the fill corners
    ],
)
def test_matches_stepwise_pipeline(crop, scale, degrees) -> None:  # type: ignore[no-untyped-def]
    stepwise, fused = _pipelines(crop, scale, degrees)
    image, mask = _smooth_sample(90, 120, 0)
    for seed in range(40):
        _assert_close(stepwise, fused, image, mask, seed)


def test_every_step_forced_on_matches() -> None:
    """p=1: rotation, blur and flip on every sample (the blur margin and flip of the window)."""
    stepwise, fused = _pipelines(50, (0.7, 1.6), (-30.0, 30.0), p=1.0)
    image, mask = _smooth_sample(100, 70, 3)
    for seed in range(30):
        _assert_close(stepwise, fused, image, mask, seed)


def test_tiny_input_scaled_by_size() -> None:
    """A factor that would round to 0 pixels: OpenCV resizes to 1 pixel by size, both paths alike."""
    stepwise, fused = _pipelines(8, (0.05, 0.1), None)
    image, mask = _smooth_sample(6, 9, 1)
    for seed in range(10):
        _assert_close(stepwise, fused, image, mask, seed)


def test_wide_label_values_keep_their_type_and_values() -> None:
    """int64 masks with labels above 255 go through uint16, exactly as in the stepwise path."""
    stepwise, fused = _pipelines(32, (0.8, 1.2), (-10.0, 10.0), p=1.0)
    image, _ = _smooth_sample(50, 50, 2)
    mask = (np.arange(50 * 50).reshape(50, 50) // 50 * 7).astype(np.int64)  # up to 343
    for seed in range(10):
        _assert_close(stepwise, fused, image, mask, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(4, 90),
    w=st.integers(4, 90),
    crop_h=st.integers(1, 70),
    crop_w=st.integers(1, 70),
    low=st.floats(0.3, 1.5),
    span=st.floats(0.0, 1.0),
    angle=st.floats(0.0, 45.0),
    seed=st.integers(0, 2**16),
)
def test_matches_stepwise_for_any_geometry(h, w, crop_h, crop_w, low, span, angle, seed) -> None:  # type: ignore[no-untyped-def]
    stepwise, fused = _pipelines((crop_h, crop_w), (low, low + span), (-angle, angle), p=0.5)
    image, mask = _smooth_sample(h, w, seed)
    _assert_close(stepwise, fused, image, mask, seed)


def test_train_transforms_fused_and_stepwise_agree() -> None:
    image, mask = _smooth_sample(120, 160, 5)
    fused, stepwise = train_transforms(64), train_transforms(64, fused=False)
    assert isinstance(fused.transforms[0], FusedTrainAugment)
    assert not any(isinstance(t, FusedTrainAugment) for t in stepwise.transforms)
    for seed in range(10):
        a_img, a_mask = fused(image, mask, np.random.default_rng(seed))
        b_img, b_mask = stepwise(image, mask, np.random.default_rng(seed))
        assert (a_img - b_img).abs().mean() < 0.01  # normalised units
        assert (a_mask != b_mask).sum() <= 4


def test_mismatched_image_and_mask_sizes_are_refused() -> None:
    _, fused = _pipelines(16)
    with pytest.raises(InputError, match="differ in size"):
        fused(np.zeros((20, 30, 3), np.uint8), np.zeros((20, 31), np.uint8), np.random.default_rng(0))
