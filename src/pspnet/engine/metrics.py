"""Segmentation metrics from one confusion matrix accumulated over the whole dataset.

Why a confusion matrix: every published number (IoU, accuracy, Dice, frequency-weighted IoU) is a
function of it, it sums exactly across images and DDP ranks, and accumulating it on the model's
device with ``torch.bincount`` costs one kernel per image. The formulas follow the authors'
``tool/test.py`` (``IoU = intersection / (union + 1e-10)`` summed over the dataset, mIoU and mAcc
averaged over *all* classes); classes that occur neither in the ground truth nor in the prediction
are flagged by ``present`` instead of being hidden, and :attr:`SegmentationMetrics.miou_present`
gives the mean over the classes that do occur.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pspnet.data.info import IGNORE_INDEX

__all__ = ["EPS", "ConfusionMatrix", "SegmentationMetrics", "metrics_from_confusion"]

EPS = 1e-10
"""The authors' denominator guard: an absent class gets IoU 0 rather than NaN."""


@dataclass
class SegmentationMetrics:
    """Dataset-level segmentation scores. Per-class lists are indexed by class id.

    Attributes:
        iou: per-class intersection over union.
        acc: per-class accuracy (recall): correct / ground-truth pixels of the class.
        dice: per-class Dice / F1 score ``2 TP / (|gt| + |pred|)``.
        present: the class occurs in the ground truth or the prediction. Absent classes have
            IoU/acc/Dice 0 by the authors' formula; this flag says they were absent, not wrong.
        miou: mean IoU over all classes (the authors' and the paper's number).
        miou_present: mean IoU over present classes (0 when no class is present).
        macc: mean per-class accuracy over all classes (authors' mAcc).
        allacc: correct pixels / labelled pixels (authors' allAcc, "pixel accuracy").
        fwiou: frequency-weighted IoU (weights = ground-truth pixel share of each class).
        mdice: mean Dice over all classes.
        labelled_pixels: pixels that were scored (ignore pixels excluded).
    """

    iou: list[float]
    acc: list[float]
    dice: list[float]
    present: list[bool]
    miou: float
    miou_present: float
    macc: float
    allacc: float
    fwiou: float
    mdice: float
    labelled_pixels: int

    @property
    def num_classes(self) -> int:
        return len(self.iou)

    def to_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """JSON-ready: plain floats, ints, bools and strings only."""
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(len(self.iou))]
        return {
            "miou": self.miou,
            "miou_present": self.miou_present,
            "macc": self.macc,
            "allacc": self.allacc,
            "fwiou": self.fwiou,
            "mdice": self.mdice,
            "labelled_pixels": self.labelled_pixels,
            "num_classes": self.num_classes,
            "num_present": int(sum(self.present)),
            "per_class": [
                {"id": i, "name": names[i], "iou": iou, "acc": acc, "dice": dice, "present": present}
                for i, (iou, acc, dice, present) in enumerate(
                    zip(self.iou, self.acc, self.dice, self.present, strict=True)
                )
            ],
        }


def metrics_from_confusion(confusion: np.ndarray | Tensor) -> SegmentationMetrics:
    """Scores from a ``(C, C)`` matrix with rows = ground truth and columns = prediction."""
    conf = confusion.detach().cpu().numpy() if isinstance(confusion, Tensor) else np.asarray(confusion)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {conf.shape}")
    conf = conf.astype(np.float64)
    inter = np.diag(conf)
    gt = conf.sum(axis=1)
    pred = conf.sum(axis=0)
    union = gt + pred - inter
    iou = inter / (union + EPS)
    acc = inter / (gt + EPS)
    dice = 2.0 * inter / (gt + pred + EPS)
    present = union > 0
    labelled = gt.sum()
    freq = gt / (labelled + EPS)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else 0.0

    return SegmentationMetrics(
        iou=[float(v) for v in iou],
        acc=[float(v) for v in acc],
        dice=[float(v) for v in dice],
        present=[bool(v) for v in present],
        miou=mean(iou),
        miou_present=mean(iou[present]),
        macc=mean(acc),
        allacc=float(inter.sum() / (labelled + EPS)),
        fwiou=float((freq * iou).sum()),
        mdice=mean(dice),
        labelled_pixels=int(labelled),
    )


class ConfusionMatrix:
    """Counts ``(ground truth, prediction)`` pixel pairs on the model's device.

    Args:
        num_classes: C; the matrix is ``(C, C)`` int64.
        ignore_index: target value never counted. Any other target outside ``[0, C)`` is skipped
            too; the authors' ``intersectionAndUnion`` would still count its prediction in the
            union (a false positive). ``pspnet eval`` and training refuse such masks up front, so
            this only matters from Python.
        device: where the counts live; put it next to the predictions to avoid copies.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch (or image) of integer predictions and targets of the same shape.

        Raises:
            ValueError: shapes differ, or a prediction lies outside ``[0, C)`` (a bug upstream:
                an argmax can never produce it, so it must not be silently dropped).
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("prediction and target must be integer class ids, not floating point")
        device = self.matrix.device
        pred = pred.to(device=device, dtype=torch.int64).reshape(-1)
        target = target.to(device=device, dtype=torch.int64).reshape(-1)
        if pred.numel() == 0:
            return
        low, high = int(pred.min()), int(pred.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"prediction values must be class ids in [0, {self.num_classes}), got range [{low}, {high}]"
            )
        valid = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        index = target[valid] * self.num_classes + pred[valid]
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the counts over DDP ranks (no-op unless torch.distributed is initialised)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)

    def numpy(self) -> np.ndarray:
        return self.matrix.detach().cpu().numpy().copy()

    def compute(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.matrix)
