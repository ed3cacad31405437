"""Boundary F-score: hand-counted cases and a brute-force reference on random label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pspnet.engine.boundary import BoundaryFScore, boundary_map, default_tolerance
from pspnet.errors import InputError


def _square(shape: tuple[int, int], top: int, left: int, side: int, fill: int = 1) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int64)
    labels[top : top + side, left : left + side] = fill
    return labels


def _score(pred: np.ndarray, target: np.ndarray, num_classes: int = 2, **kwargs):
    metric = BoundaryFScore(num_classes, **kwargs)
    metric.update(pred, target)
    return metric.compute()


def _counts(result, c: int) -> tuple[int, int, int, int]:
    return result.matched_pred[c], result.total_pred[c], result.matched_gt[c], result.total_gt[c]


def test_boundary_map_of_a_square_is_its_inner_ring_and_the_frame_is_no_edge():
    labels = _square((12, 12), 2, 3, 5)
    ring = boundary_map(labels == 1)
    assert ring.sum() == 4 * 5 - 4  # 16 pixels of the 5x5 square's outer ring
    assert not ring[3:6, 4:7].any()  # interior
    # the background's edge is the 4 sides just outside the square (no corners); none on the frame
    outside = boundary_map(labels == 0)
    assert outside.sum() == 4 * 5
    assert not outside[0].any() and not outside[:, 0].any()


def test_default_tolerance_is_three_quarters_of_a_percent_of_the_diagonal_rounded_up():
    assert default_tolerance(192, 192) == 3  # 0.0075 * 271.5 = 2.04 -> 3
    assert default_tolerance(1024, 2048) == 18  # 0.0075 * 2289.7 = 17.2 -> 18
    assert default_tolerance(8, 8) == 1  # never below one pixel


def test_perfect_prediction_scores_one():
    target = _square((30, 30), 4, 6, 9)
    target[20:25, 2:28] = 2
    result = _score(target.copy(), target, num_classes=3)
    assert result.f == [1.0, 1.0, 1.0]
    assert result.mean_f == 1.0
    assert result.present == [True, True, True]


@pytest.mark.parametrize("shift", [1, 2])
def test_square_shifted_within_tolerance_scores_one(shift):
    target = _square((30, 40), 10, 10, 8)
    pred = _square((30, 40), 10, 10 + shift, 8)
    result = _score(pred, target, tolerance_px=2)
    assert result.f == [1.0, 1.0]
    # the ring of an 8x8 square: 28 pixels; the background's edge around it: 32
    assert _counts(result, 1) == (28, 28, 28, 28)
    assert _counts(result, 0) == (32, 32, 32, 32)


def test_square_moved_beyond_tolerance_scores_zero_with_exact_counts():
    target = _square((40, 60), 10, 5, 8)
    pred = _square((40, 60), 10, 30, 8)  # 17 px gap between the two squares' edges
    result = _score(pred, target, tolerance_px=2)
    assert _counts(result, 1) == (0, 28, 0, 28)
    assert _counts(result, 0) == (0, 32, 0, 32)
    assert result.f == [0.0, 0.0]
    assert result.precision == [0.0, 0.0] and result.recall == [0.0, 0.0]


def test_square_shifted_past_tolerance_matches_only_near_edges():
    # 10x10 square shifted right by 3 px, tolerance 1 px. Predicted ring (36 px), unmatched:
    # left column rows 2..7 of the square (6: the gt left edge is 3 px away, top/bottom >= 2 px),
    # the whole right column (10: >= 3 px from the gt right edge), and the top and bottom rows'
    # pixel at column +11 (2: 2 px beyond the gt corner). 18 of 36 matched; the same by symmetry.
    target = _square((30, 40), 10, 10, 10)
    pred = _square((30, 40), 10, 13, 10)
    result = _score(pred, target, tolerance_px=1)
    assert _counts(result, 1) == (18, 36, 18, 36)
    assert result.precision[1] == pytest.approx(0.5)
    assert result.recall[1] == pytest.approx(0.5)
    assert result.f[1] == pytest.approx(0.5)


def test_ignore_pixels_and_their_neighbours_are_never_counted():
    # left half class 0, right half class 1, rows 5..7 ignored; the prediction is garbage there
    target = np.zeros((20, 20), dtype=np.int64)
    target[:, 10:] = 1
    target[5:8] = 255
    pred = target.copy()
    pred[5:8] = 1
    result = _score(pred, target)
    # each class's edge is one column of 20 px minus rows 4..8 (ignored or next to ignore): 15
    assert _counts(result, 0) == (15, 15, 15, 15)
    assert _counts(result, 1) == (15, 15, 15, 15)
    assert result.f == [1.0, 1.0]


def test_counts_accumulate_over_images_and_absent_classes_are_not_averaged():
    metric = BoundaryFScore(3, tolerance_px=2)
    target = _square((30, 40), 10, 10, 8)
    metric.update(target, target)  # perfect
    metric.update(_square((30, 40), 10, 30, 8), _square((30, 40), 10, 5, 8))  # 0 matched (gap 17 px)
    result = metric.compute()
    assert _counts(result, 1) == (28, 56, 28, 56)
    assert result.f[1] == pytest.approx(0.5)
    assert result.present == [True, True, False]
    assert result.mean_f == pytest.approx(0.5)
    assert result.to_dict(["a", "b", "c"])["per_class"]["c"]["present"] is False


def test_tensor_inputs_and_bad_shapes():
    target = _square((16, 16), 4, 4, 6)
    result = _score(torch.from_numpy(target), torch.from_numpy(target))
    assert result.f == [1.0, 1.0]
    with pytest.raises(InputError, match="same shape"):
        BoundaryFScore(2).update(target, target[:8])
    with pytest.raises(InputError, match="integer"):
        BoundaryFScore(2).update(target.astype(np.float32), target)


def _reference(pred: np.ndarray, target: np.ndarray, num_classes: int, tol: float, ignore: int = 255):
    """Brute force: explicit neighbour loops and all-pairs distances."""
    h, w = target.shape

    def neighbours(y, x):
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                yield y + dy, x + dx

    def scored(y, x):
        return target[y, x] != ignore and all(target[q] != ignore for q in neighbours(y, x))

    def edge(labels, c):
        return [
            (y, x)
            for y in range(h)
            for x in range(w)
            if labels[y, x] == c and scored(y, x) and any(labels[q] != c for q in neighbours(y, x))
        ]

    def matched(points, other):
        return sum(any(math.hypot(y - v, x - u) <= tol for v, u in other) for y, x in points)

    counts = []
    for c in range(num_classes):
        p, g = edge(pred, c), edge(target, c)
        counts.append((matched(p, g), len(p), matched(g, p), len(g)))
    return counts


label_maps = arrays(np.int64, (9, 11), elements=st.sampled_from([0, 1, 2, 255]))


@settings(max_examples=40, deadline=None)
@given(pred=label_maps, target=label_maps, tol=st.sampled_from([0.0, 1.0, 1.5, 2.0]))
def test_matches_brute_force_reference(pred, target, tol):
    pred = np.where(pred == 255, 0, pred)  # predictions are class ids
    result = _score(pred, target, num_classes=3, tolerance_px=tol)
    expected = _reference(pred, target, 3, tol)
    assert [_counts(result, c) for c in range(3)] == expected


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.int64, (10, 12), elements=st.integers(0, 3)),
    b=arrays(np.int64, (10, 12), elements=st.integers(0, 3)),
)
def test_scores_are_bounded_and_swapping_swaps_precision_and_recall(a, b):
    forward = _score(a, b, num_classes=4, tolerance_px=1)
    backward = _score(b, a, num_classes=4, tolerance_px=1)
    for c in range(4):
        assert 0.0 <= forward.f[c] <= 1.0
        assert forward.precision[c] == pytest.approx(backward.recall[c])
        assert forward.recall[c] == pytest.approx(backward.precision[c])
        assert forward.f[c] == pytest.approx(backward.f[c])
