"""Confusion-matrix metrics against numbers computed by hand and against the authors' formula."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet.engine.metrics import ConfusionMatrix, metrics_from_confusion

# Tiny example, 3 classes, two ignore pixels (255) at the end:
#   target 0 0 0 1 1 2 255 255
#   pred   0 0 1 1 2 2   0   1
# By hand: confusion rows = gt, cols = pred: [[2,1,0],[0,1,1],[0,0,1]];
# intersection [2,1,1], gt area [3,2,1], pred area [2,2,2], union [3,3,2].
TARGET = [0, 0, 0, 1, 1, 2, 255, 255]
PRED = [0, 0, 1, 1, 2, 2, 0, 1]


def _filled(num_classes: int = 3) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.tensor(PRED), torch.tensor(TARGET))
    return cm


def test_confusion_counts_by_hand() -> None:
    assert _filled().numpy().tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_metrics_by_hand() -> None:
    m = _filled().compute()
    assert m.iou == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert m.miou == pytest.approx(0.5)
    assert m.acc == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert m.macc == pytest.approx(13 / 18)
    assert m.allacc == pytest.approx(4 / 6)
    assert m.dice == pytest.approx([4 / 5, 2 / 4, 2 / 3])
    assert m.mdice == pytest.approx(59 / 90)
    assert m.fwiou == pytest.approx(19 / 36)
    assert m.present == [True, True, True]
    assert m.miou_present == pytest.approx(0.5)
    assert m.labelled_pixels == 6


def test_absent_class_is_flagged_and_counted_in_the_authors_mean() -> None:
    m = _filled(num_classes=4).compute()
    assert m.present == [True, True, True, False]
    assert m.iou[3] == 0.0 and m.acc[3] == 0.0 and m.dice[3] == 0.0
    assert m.miou == pytest.approx(1.5 / 4)  # authors: mean over all classes
    assert m.miou_present == pytest.approx(0.5)
    assert m.macc == pytest.approx((13 / 6) / 4)
    assert not any(np.isnan(v) for v in [*m.iou, *m.acc, *m.dice, m.miou, m.macc, m.fwiou])


def test_class_only_in_prediction_is_present_with_zero_iou() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([2, 0]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m.present == [True, False, True]
    assert m.iou == pytest.approx([0.5, 0.0, 0.0])


def test_empty_matrix_gives_zeros_not_nan() -> None:
    m = ConfusionMatrix(3).compute()
    assert m.miou == 0.0 and m.miou_present == 0.0 and m.allacc == 0.0 and m.labelled_pixels == 0
    assert m.present == [False, False, False]


def test_targets_outside_the_class_range_are_ignored() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 7, 255, -1]))
    assert cm.numpy().sum() == 1 and cm.numpy()[0, 0] == 1


def test_custom_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]))
    assert cm.numpy().tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("bad", [3, -1, 255])
def test_prediction_outside_the_class_range_raises(bad: int) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction values"):
        cm.update(torch.tensor([0, bad]), torch.tensor([0, 255]))


def test_shape_and_dtype_mismatch_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_accumulation_equals_one_update_and_reset_clears() -> None:
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(3)]
    targets = [np.where(rng.random((6, 7)) < 0.2, 255, rng.integers(0, 5, (6, 7))) for _ in range(3)]
    split, whole = ConfusionMatrix(5), ConfusionMatrix(5)
    for p, t in zip(preds, targets, strict=True):
        split.update(torch.from_numpy(p), torch.from_numpy(t))
    whole.update(torch.from_numpy(np.concatenate(preds)), torch.from_numpy(np.concatenate(targets)))
    assert np.array_equal(split.numpy(), whole.numpy())
    split.reset()
    assert split.numpy().sum() == 0


def test_all_reduce_without_distributed_is_a_noop() -> None:
    cm = _filled()
    cm.all_reduce()
    assert cm.numpy().tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_to_dict_is_json_ready_and_names_classes() -> None:
    data = json.loads(json.dumps(_filled(4).compute().to_dict(["a", "b", "c", "d"])))
    assert data["miou"] == pytest.approx(0.375)
    assert data["per_class"][3] == {
        "id": 3,
        "name": "d",
        "iou": 0.0,
        "acc": 0.0,
        "dice": 0.0,
        "present": False,
    }
    assert data["num_present"] == 3


def _authors_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """Independent re-statement of the authors' intersectionAndUnion + cal_acc (histograms)."""
    keep = target != 255
    pred, target = pred[keep], target[keep]
    inter = np.histogram(pred[pred == target], bins=num_classes, range=(0, num_classes - 1))[0]
    area_pred = np.histogram(pred, bins=num_classes, range=(0, num_classes - 1))[0]
    area_target = np.histogram(target, bins=num_classes, range=(0, num_classes - 1))[0]
    union = area_pred + area_target - inter
    return inter / (union + 1e-10), inter.sum() / (area_target.sum() + 1e-10)


pixels = st.integers(min_value=1, max_value=60)


@st.composite
def pred_target(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    num_classes = draw(st.integers(min_value=1, max_value=6))
    n = draw(pixels)
    pred = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    target = np.array(draw(st.lists(st.sampled_from([*range(num_classes), 255]), min_size=n, max_size=n)))
    return pred, target, num_classes


@settings(max_examples=60, deadline=None)
@given(pred_target())
def test_property_matches_authors_formula_and_iou_in_unit_interval(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    pred, target, num_classes = case
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    m = cm.compute()
    iou, allacc = _authors_iou(pred, target, num_classes)
    assert m.iou == pytest.approx(iou.tolist())
    assert m.allacc == pytest.approx(allacc)
    assert all(0.0 <= v <= 1.0 for v in [*m.iou, *m.acc, *m.dice, m.miou, m.fwiou, m.allacc])


@settings(max_examples=40, deadline=None)
@given(pred_target(), st.randoms(use_true_random=False))
def test_property_pixel_permutation_invariance(case: tuple[np.ndarray, np.ndarray, int], rnd) -> None:
    pred, target, num_classes = case
    order = list(range(len(pred)))
    rnd.shuffle(order)
    a, b = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    a.update(torch.from_numpy(pred), torch.from_numpy(target))
    b.update(torch.from_numpy(pred[order]), torch.from_numpy(target[order]))
    assert np.array_equal(a.numpy(), b.numpy())


@settings(max_examples=40, deadline=None)
@given(pred_target(), st.integers(1, 20), st.integers(0, 2**16))
def test_property_ignore_pixels_never_counted(
    case: tuple[np.ndarray, np.ndarray, int], extra: int, seed: int
) -> None:
    pred, target, num_classes = case
    rng = np.random.default_rng(seed)
    base = ConfusionMatrix(num_classes)
    base.update(torch.from_numpy(pred), torch.from_numpy(target))
    more = ConfusionMatrix(num_classes)
    more.update(
        torch.from_numpy(np.concatenate([pred, rng.integers(0, num_classes, extra)])),
        torch.from_numpy(np.concatenate([target, np.full(extra, 255)])),
    )
    assert np.array_equal(base.numpy(), more.numpy())
    assert base.numpy().sum() == int((target != 255).sum())


def test_metrics_from_confusion_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))
