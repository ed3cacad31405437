"""Boundary F-score: how well predicted class edges line up with the ground truth's.

mIoU is dominated by region interiors: a prediction whose edges are a few pixels off loses only a
thin band of pixels. A decoder meant to sharpen edges has to be judged on the edges themselves,
so this module scores boundaries directly, in the style of Csurka et al. (BMVC 2013) and the
DAVIS contour measure (Perazzi et al., CVPR 2016):

- For each class, the boundary of a binary class mask is the set of pixels of the class with a
  4-neighbour not of the class. The image frame is not an edge (the border is padded by
  replication), and pixels that are ignore-labelled or have an ignore-labelled 4-neighbour in the
  ground truth are excluded from both maps: nobody knows where the edge there is.
- A predicted boundary pixel is matched when a ground-truth boundary pixel of the same class lies
  within ``tolerance`` pixels (Euclidean), and vice versa.
- Counts are summed over the dataset per class (like the confusion matrix behind mIoU, so large
  images weigh more): precision = matched predicted / predicted, recall = matched ground truth /
  ground truth, F = 2PR / (P + R).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from pspnet.errors import InputError

__all__ = ["BoundaryFScore", "BoundaryMetrics", "boundary_map", "default_tolerance"]


def default_tolerance(height: int, width: int, ratio: float = 0.0075) -> int:
    """``ceil(ratio * image diagonal)`` pixels, at least 1: 0.75% (3 px at 192x192, 18 px at 1024x2048).

    Scaling with the image keeps the score comparable across resolutions, as in the DAVIS measure
    (which uses 0.8%); rounding up to at least one pixel tolerates the half-pixel ambiguity of
    where an edge between two pixels lies.
    """
    return max(1, math.ceil(ratio * math.hypot(height, width)))


def _erode4(mask: np.ndarray) -> np.ndarray:
    """True where the pixel and its four neighbours are True; the frame replicates the border."""
    p = np.pad(mask, 1, mode="edge")
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask with a 4-neighbour outside it (the image frame is not an edge)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~_erode4(mask)


def _matched(points: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    """How many True pixels of ``points`` lie within ``tolerance`` of a True pixel of ``other``."""
    if not points.any() or not other.any():
        return 0
    # distance of every pixel to the nearest boundary pixel of ``other`` (zeros of the input)
    dist = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int((dist[points] <= tolerance + 1e-6).sum())


def _as_numpy(labels: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{what} must be a (H, W) label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what} must hold integer class ids, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


@dataclass
class BoundaryMetrics:
    """Per-class boundary precision / recall / F (0-1) and the dataset-wide pixel counts.

    ``present[c]`` is True when class ``c`` has ground-truth boundary pixels; ``mean_f`` averages
    ``f`` over those classes only (NaN when there are none). A class with ground-truth boundary
    but no predicted boundary has precision 0 and F 0; an absent class has F 0 but is not averaged.
    """

    f: list[float]
    precision: list[float]
    recall: list[float]
    present: list[bool]
    mean_f: float
    matched_pred: list[int]
    total_pred: list[int]
    matched_gt: list[int]
    total_gt: list[int]
    tolerance: str

    def mean_over(self, classes: list[int]) -> float:
        """Mean F over the given class ids that are present (NaN when none is)."""
        values = [self.f[c] for c in classes if self.present[c]]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        names = class_names or [str(i) for i in range(len(self.f))]
        return {
            "mean_f": None if math.isnan(self.mean_f) else self.mean_f,
            "tolerance": self.tolerance,
            "per_class": {
                name: {
                    "f": self.f[i],
                    "precision": self.precision[i],
                    "recall": self.recall[i],
                    "present": self.present[i],
                    "matched_pred": self.matched_pred[i],
                    "total_pred": self.total_pred[i],
                    "matched_gt": self.matched_gt[i],
                    "total_gt": self.total_gt[i],
                }
                for i, name in enumerate(names)
            },
        }


class BoundaryFScore:
    """Accumulates boundary matches over a dataset, one (prediction, ground truth) pair at a time.

    Args:
        num_classes: class ids ``0 .. num_classes - 1`` are scored; other values in the
            prediction are "no class".
        ignore_index: ground-truth label that is never scored (nor its 4-neighbours).
        tolerance_px: matching distance in pixels; overrides ``tolerance_ratio``.
        tolerance_ratio: default tolerance as a fraction of each image's diagonal, rounded up,
            at least 1 px (0.75%: 3 px at 192x192, 6 px at 473x473, 18 px at 1024x2048).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        tolerance_px: float | None = None,
        tolerance_ratio: float = 0.0075,
    ) -> None:
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        if tolerance_px is not None and tolerance_px < 0:
            raise InputError(f"tolerance_px must be >= 0, got {tolerance_px}")
        if tolerance_ratio <= 0:
            raise InputError(f"tolerance_ratio must be > 0, got {tolerance_ratio}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.tolerance_px = tolerance_px
        self.tolerance_ratio = tolerance_ratio
        self.reset()

    def reset(self) -> None:
        # rows: matched predicted, predicted, matched ground truth, ground truth
        self.counts = np.zeros((4, self.num_classes), dtype=np.int64)

    def tolerance_for(self, height: int, width: int) -> float:
        if self.tolerance_px is not None:
            return float(self.tolerance_px)
        return float(default_tolerance(height, width, self.tolerance_ratio))

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one image: ``pred`` and ``target`` are (H, W) integer label maps of the same size."""
        pred = _as_numpy(pred, "pred")
        target = _as_numpy(target, "target")
        if pred.shape != target.shape:
            raise InputError(f"pred {pred.shape} and target {target.shape} must have the same shape")
        tolerance = self.tolerance_for(*target.shape)
        scored = _erode4(target != self.ignore_index)
        for c in range(self.num_classes):
            gt_mask = target == c
            pred_mask = pred == c
            if not gt_mask.any() and not pred_mask.any():
                continue
            gt_edge = boundary_map(gt_mask) & scored
            pred_edge = boundary_map(pred_mask) & scored
            self.counts[:, c] += (
                _matched(pred_edge, gt_edge, tolerance),
                int(pred_edge.sum()),
                _matched(gt_edge, pred_edge, tolerance),
                int(gt_edge.sum()),
            )

    def compute(self) -> BoundaryMetrics:
        matched_pred, total_pred, matched_gt, total_gt = self.counts
        precision = np.divide(matched_pred, total_pred, out=np.zeros(self.num_classes), where=total_pred > 0)
        recall = np.divide(matched_gt, total_gt, out=np.zeros(self.num_classes), where=total_gt > 0)
        denom = precision + recall
        f = np.divide(2 * precision * recall, denom, out=np.zeros(self.num_classes), where=denom > 0)
        present = total_gt > 0
        mean_f = float(f[present].mean()) if present.any() else float("nan")
        tolerance = (
            f"{self.tolerance_px:g} px"
            if self.tolerance_px is not None
            else f"{100 * self.tolerance_ratio:g}% of the image diagonal, rounded up, >= 1 px"
        )
        return BoundaryMetrics(
            f=[float(v) for v in f],
            precision=[float(v) for v in precision],
            recall=[float(v) for v in recall],
            present=[bool(v) for v in present],
            mean_f=mean_f,
            matched_pred=[int(v) for v in matched_pred],
            total_pred=[int(v) for v in total_pred],
            matched_gt=[int(v) for v in matched_gt],
            total_gt=[int(v) for v in total_gt],
            tolerance=tolerance,
        )
