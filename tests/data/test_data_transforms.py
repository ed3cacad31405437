"""Paired transforms: exact geometry per step, padding values, seeding, and an alignment property."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.data.transforms import (
    Compose,
    RandomCrop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomRotate,
    RandomScale,
    ToFloat,
    ToTensor,
    eval_transforms,
    train_transforms,
)
from pspnet.errors import InputError

IGN = 255


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sample(h: int = 12, w: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (h, w, 3), dtype=np.uint8), g.integers(0, 5, (h, w)).astype(np.int64)


def test_scale_factor_and_nearest_mask() -> None:
    image, mask = _sample()
    out_img, out_mask = RandomScale(2.0, 2.0)(image, mask, _rng())
    assert out_img.shape == (24, 20, 3)
    np.testing.assert_array_equal(out_mask, mask.repeat(2, 0).repeat(2, 1))  # nearest, exact x2
    # one factor for both axes, drawn uniformly from [low, high) with the generator given
    factor = 0.5 + 1.5 * _rng(7).random()
    out_img, out_mask = RandomScale(0.5, 2.0)(np.zeros((40, 30, 3), np.float32), np.zeros((40, 30)), _rng(7))
    assert out_mask.shape == (round(40 * factor), round(30 * factor)) == out_img.shape[:2]


def test_rotate_90_about_the_authors_centre_pads_with_fill_and_ignore() -> None:
    image, mask = _sample(8, 8)
    fill = (1.0, 2.0, 3.0)
    rot = RandomRotate((90.0, 90.0), p=1.0, fill=fill, ignore_index=IGN)
    out_img, out_mask = rot(image.astype(np.float32), mask, _rng())
    # cv2 rotates about (w/2, h/2): a 90 degree turn equals np.rot90 shifted down one row, and the
    # uncovered top row is padding
    np.testing.assert_array_equal(out_mask[1:], np.rot90(mask)[:-1])
    assert (out_mask[0] == IGN).all()
    np.testing.assert_allclose(out_img[1:], np.rot90(image)[:-1].astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(out_img[0], np.tile(fill, (8, 1)), atol=1e-3)
    # p=0 never rotates
    same_img, same_mask = RandomRotate(p=0.0)(image, mask, _rng())
    assert same_img is image and same_mask is mask


def test_flip_blur_and_their_probabilities() -> None:
    image, mask = _sample()
    flipped = RandomHorizontalFlip(1.0)(image, mask, _rng())
    np.testing.assert_array_equal(flipped[0], image[:, ::-1])
    np.testing.assert_array_equal(flipped[1], mask[:, ::-1])
    assert RandomHorizontalFlip(0.0)(image, mask, _rng())[0] is image

    img = np.zeros((9, 9, 3), np.float32)
    img[4, 4] = 100.0
    blurred, same_mask = RandomGaussianBlur(5, 1.0)(img, mask, _rng())
    assert same_mask is mask  # the mask is never blurred
    # a 5x5 Gaussian spreads the impulse over exactly the 5x5 neighbourhood, keeping its sum
    assert np.count_nonzero(blurred[..., 0] > 1e-6) == 25
    assert blurred[..., 0].sum() == pytest.approx(100.0, rel=1e-4)
    assert RandomGaussianBlur(5, 0.0)(img, mask, _rng())[0] is img


def test_crop_pads_symmetrically_then_crops() -> None:
    image, mask = _sample(3, 5)
    fill = (10.0, 20.0, 30.0)
    out_img, out_mask = RandomCrop((6, 8), fill=fill, ignore_index=IGN)(
        image.astype(np.float32), mask, _rng()
    )
    # pad 3 rows (1 top, 2 bottom) and 3 columns (1 left, 2 right), as the authors' Crop does
    expected_mask = np.pad(mask, ((1, 2), (1, 2)), constant_values=IGN)
    np.testing.assert_array_equal(out_mask, expected_mask)
    expected_img = np.stack(
        [
            np.pad(image[..., c].astype(np.float32), ((1, 2), (1, 2)), constant_values=fill[c])
            for c in range(3)
        ],
        -1,
    )
    np.testing.assert_array_equal(out_img, expected_img)


def test_random_crop_covers_every_offset_and_center_crop() -> None:
    image, _ = _sample(6, 7)
    labelled = np.arange(42).reshape(6, 7)
    seen = set()
    for seed in range(200):
        _, out = RandomCrop((4, 4))(image, labelled, _rng(seed))
        top, left = divmod(int(out[0, 0]), 7)
        np.testing.assert_array_equal(out, labelled[top : top + 4, left : left + 4])
        seen.add((top, left))
    assert seen == {(t, left) for t in range(3) for left in range(4)}
    _, centred = RandomCrop((4, 4), center=True)(image, labelled, _rng())
    np.testing.assert_array_equal(centred, labelled[1:5, 1:5])


def test_to_tensor_and_eval_pipeline() -> None:
    image, mask = _sample()
    img_t, mask_t = eval_transforms(PYTORCH_PREPROCESS)(image, mask.astype(np.uint8), _rng())
    assert img_t.dtype == torch.float32 and img_t.shape == (3, 12, 10)
    assert mask_t.dtype == torch.int64
    np.testing.assert_array_equal(mask_t.numpy(), mask)
    mean = np.array(PYTORCH_PREPROCESS.mean, np.float32)
    std = np.array(PYTORCH_PREPROCESS.std, np.float32)
    np.testing.assert_allclose(img_t.numpy().transpose(1, 2, 0), (image - mean) / std, rtol=1e-5, atol=1e-5)
    assert isinstance(ToTensor()(image, mask, _rng())[0], torch.Tensor)


def test_train_pipeline_pads_with_mean_which_normalises_to_zero() -> None:
    image, mask = _sample(10, 10)
    t = train_transforms(30, PYTORCH_PREPROCESS, scale=None, rotate=None, blur=False, flip=False)
    img_t, mask_t = t(image, mask, _rng())
    assert img_t.shape == (3, 30, 30) and mask_t.shape == (30, 30)
    padded = mask_t == IGN
    assert padded.sum() == 30 * 30 - 100
    assert torch.all(img_t[:, padded] == 0)  # mean padding is exactly zero after normalising


def test_same_seed_same_output_different_index_different_output() -> None:
    image, mask = _sample(40, 40)
    t = train_transforms(32)
    a = t(image, mask, np.random.default_rng([0, 0, 3]))
    b = t(image, mask, np.random.default_rng([0, 0, 3]))
    c = t(image, mask, np.random.default_rng([0, 0, 4]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_bad_parameters_raise_input_error() -> None:
    with pytest.raises(InputError):
        RandomScale(2.0, 0.5)
    with pytest.raises(InputError):
        RandomRotate(p=1.5)
    with pytest.raises(InputError):
        RandomGaussianBlur(4)
    with pytest.raises(InputError):
        RandomCrop(0)


# ------------------------------------------------------------------ alignment property
#
# The image encodes the labels: label ``labels[i]`` is the pure colour 255 on channel i, ignore
# pixels are black, and the preprocessing is the identity (mean 0, std 1), so padding is black too.
# Every step is a non-negative weighted average of source pixels on the image side and a
# nearest-neighbour pick on the mask side. Masks are made of 8x8 blocks, so whichever source pixel
# the mask picks, a pixel of the same label carries a sizeable weight in the image within 3 pixels
# (OpenCV's INTER_NEAREST resize is off by up to one pixel from INTER_LINEAR; blur reaches 2).
# Hence: (a) where the image is the pure colour of one label over a whole 7x7 window, the mask
# holds that label there; (b) where the mask holds a label, that label's channel is non-zero
# somewhere in the 7x7 window. And no mask value is ever new except the ignore label.

_IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_RADIUS = 3
_BLOCK = 8


def _encode(grid: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    mask = grid.repeat(_BLOCK, 0).repeat(_BLOCK, 1).astype(np.int64)
    image = np.zeros((*mask.shape, 3), np.uint8)
    for channel, label in enumerate(labels):
        image[mask == label, channel] = 255
    return image, mask


def _window_all(flags: np.ndarray) -> np.ndarray:
    """True where ``flags`` holds on the whole (2R+1)^2 window; outside the image counts as False."""
    k = np.ones((2 * _RADIUS + 1,) * 2, np.uint8)
    return cv2.erode(flags.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _window_any(flags: np.ndarray) -> np.ndarray:
    k = np.ones((2 * _RADIUS + 1,) * 2, np.uint8)
    return cv2.dilate(flags.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _check_alignment(image: np.ndarray, mask: np.ndarray, labels: list[int]) -> int:
    """Assert (a) and (b) above; return how many pixels (a) constrained (for non-vacuity checks)."""
    tol = 0.5
    checked = 0
    codes = [(np.eye(3)[i] * 255.0, label) for i, label in enumerate(labels)] + [(np.zeros(3), IGN)]
    for code, label in codes:
        pure = _window_all(np.all(np.abs(image - code) < tol, axis=-1))
        assert np.all(mask[pure] == label), f"label {label}: mask disagrees inside a pure image region"
        checked += int(pure.sum())
    interior = np.zeros(mask.shape, bool)
    interior[_RADIUS:-_RADIUS, _RADIUS:-_RADIUS] = True
    for channel, label in enumerate(labels):
        support = _window_any(image[..., channel] > tol)
        assert np.all(support[interior & (mask == label)]), f"label {label} in mask where the image has none"
    return checked


@st.composite
def _grids(draw) -> tuple[np.ndarray, list[int]]:
    labels = draw(st.lists(st.integers(0, 254), min_size=1, max_size=3, unique=True))
    gh, gw = draw(st.integers(2, 7)), draw(st.integers(2, 7))
    cells = draw(st.lists(st.sampled_from([*labels, IGN]), min_size=gh * gw, max_size=gh * gw))
    return np.array(cells).reshape(gh, gw), labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grids(), st.integers(0, 2**32 - 1), st.sampled_from([16, 32, 48]))
@example((np.array([[3, 7], [7, 255]]).repeat(3, 0).repeat(3, 1), [3, 7]), 1, 24)
def test_train_pipeline_keeps_labels_and_alignment(grid_labels, seed: int, crop: int) -> None:
    grid, labels = grid_labels
    image, mask = _encode(grid, labels)
    out_img, out_mask = train_transforms(crop, _IDENTITY)(image, mask, np.random.default_rng(seed))
    out_mask = out_mask.numpy()
    assert out_img.shape == (3, crop, crop) and out_mask.shape == (crop, crop)
    assert set(np.unique(out_mask).tolist()) <= {*labels, IGN}
    _check_alignment(out_img.numpy().transpose(1, 2, 0), out_mask, labels)


def test_alignment_check_is_not_vacuous_and_catches_a_shift() -> None:
    grid = np.array([[1, 2, 1, 2], [2, 1, 2, 1], [1, 255, 2, 1], [2, 1, 1, 2]]).repeat(2, 0).repeat(2, 1)
    image, mask = _encode(grid, [1, 2])
    total = 0
    for seed in range(10):
        out_img, out_mask = train_transforms(40, _IDENTITY)(image, mask, np.random.default_rng(seed))
        total += _check_alignment(out_img.numpy().transpose(1, 2, 0), out_mask.numpy(), [1, 2])
    assert total > 1000
    # a mask shifted by a block against its image must fail the check
    pipeline = Compose([ToFloat(), ToTensor(_IDENTITY)])
    img_t, mask_t = pipeline(image, np.roll(mask, _BLOCK * 2, axis=1), _rng())
    with pytest.raises(AssertionError):
        _check_alignment(img_t.numpy().transpose(1, 2, 0), mask_t.numpy(), [1, 2])
