"""Dataset evaluation: predict every image with the authors' protocol and score it.

``evaluate`` needs only ``dataset.info`` (class names, ignore index), ``len(dataset)`` and
``dataset.load_raw(i) -> (RGB uint8 image, int64 train-id mask)``: no DataLoader, no transform,
because the protocol works on full-size raw images one at a time (the batching happens inside,
across sliding windows). Under ``torch.distributed`` each rank takes images ``rank::world`` and the
confusion matrices are summed, so every rank returns the same result. ``boundary=True`` also
scores object edges (:mod:`pspnet.engine.boundary`), which mIoU barely sees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pspnet.data.info import has_placeholder_names
from pspnet.engine.boundary import BoundaryFScore, BoundaryMetrics
from pspnet.engine.inference import check_amp_dtype, check_settings, predict_probs
from pspnet.engine.metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion
from pspnet.errors import DataError, InputError

__all__ = [
    "AUTHORS_DATASET_KINDS",
    "EvalDataset",
    "EvalExample",
    "EvalResult",
    "class_names_note",
    "evaluate",
    "protocol_base_size",
    "protocol_crop_size",
]

AUTHORS_DATASET_KINDS = ("voc2012", "cityscapes", "ade20k")
"""Dataset layouts the authors evaluated on; their images are resized to a base size at scale 1.0."""


class EvalDataset(Protocol):
    """What :func:`evaluate` reads from a dataset (``SegmentationDataset`` provides it)."""

    info: Any

    def __len__(self) -> int: ...

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass
class EvalExample:
    """One scored image kept for display: RGB image, ground truth and prediction (train ids)."""

    index: int
    image: np.ndarray
    mask: np.ndarray
    pred: np.ndarray


@dataclass
class EvalResult:
    """Scores, the raw confusion matrix (rows = ground truth, cols = prediction) and the settings."""

    metrics: SegmentationMetrics
    confusion: np.ndarray
    class_names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    num_images: int = 0
    boundary: BoundaryMetrics | None = None
    examples: list[EvalExample] = field(default_factory=list)

    def summary(self) -> str:
        m = self.metrics
        return (
            f"mIoU {100 * m.miou:.2f}  mAcc {100 * m.macc:.2f}  allAcc {100 * m.allacc:.2f}  "
            f"(mIoU over {sum(m.present)} present classes {100 * m.miou_present:.2f}; "
            f"fwIoU {100 * m.fwiou:.2f}; mDice {100 * m.mdice:.2f})"
        )

    def format_table(self) -> str:
        """Per-class IoU / accuracy / Dice (percent), boundary F if scored, and the summary lines."""
        width = max([len("class"), *(len(n) for n in self.class_names)])
        b = self.boundary
        header = f"{'id':>4}  {'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'Dice':>6}"
        lines = [header + (f"  {'BndF':>6}" if b is not None else "")]
        m = self.metrics
        for i, name in enumerate(self.class_names):
            if m.present[i]:
                scores = f"{100 * m.iou[i]:6.2f}  {100 * m.acc[i]:6.2f}  {100 * m.dice[i]:6.2f}"
                if b is not None:
                    scores += f"  {100 * b.f[i]:6.2f}" if b.present[i] else f"  {'-':>6}"
                lines.append(f"{i:>4}  {name:<{width}}  {scores}")
            else:
                lines.append(f"{i:>4}  {name:<{width}}  {'absent (not in ground truth or prediction)':>22}")
        lines.append("")
        lines.append(f"{self.num_images} images, {m.labelled_pixels} labelled pixels")
        lines.append(self.summary())
        if b is not None:
            lines.append(
                f"boundary F {100 * b.mean_f:.2f} over {sum(b.present)} classes (tolerance {b.tolerance})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "metrics": self.metrics.to_dict(self.class_names),
            "settings": self.settings,
            "num_images": self.num_images,
            "confusion": self.confusion.astype(np.int64).tolist(),
        }
        if self.boundary is not None:
            out["boundary"] = self.boundary.to_dict(self.class_names)
        return out

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write every number and the settings as JSON (atomically)."""
        from pspnet.io.checkpoint import atomic_write

        text = json.dumps(self.to_dict(), indent=2)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def save_confusion_plot(self, path: str | os.PathLike[str]) -> Path:
        """Row-normalised confusion matrix as a PNG image."""
        from pspnet.viz import plot_confusion_matrix

        return plot_confusion_matrix(self.confusion, self.class_names, path)


def protocol_base_size(dataset: EvalDataset) -> int | None:
    """Long side at scale 1.0 under the authors' protocol: the dataset's base size for the layouts
    they evaluated (VOC2012, Cityscapes, ADE20K; judged by the layout read, not by the label
    space's name), None (each image at its own size) for folder and list datasets."""
    if getattr(dataset, "kind", None) in AUTHORS_DATASET_KINDS:
        return int(dataset.info.base_size)
    return None


def protocol_crop_size(model: nn.Module, dataset: EvalDataset) -> int:
    """Sliding-window crop when none is given: the crop the model was trained at (its dataset
    info), else the authors' crop for their datasets. A folder dataset's default crop is a
    placeholder, not a training crop, so guessing one there would silently pad small images.

    Raises:
        InputError: neither the model nor the dataset knows a crop size.
    """
    model_info = getattr(model, "dataset_info", None)
    if model_info is not None:
        return int(model_info.crop_size)
    if getattr(dataset, "kind", None) in AUTHORS_DATASET_KINDS:
        return int(dataset.info.crop_size)
    raise InputError(
        "mode='slide' needs a crop size (--crop-size): this model carries no training crop and "
        f"the {dataset.info.name!r} dataset has none of its own"
    )


def class_names_note(
    dataset_names: Sequence[str], model_names: Sequence[str], source: str = "the dataset"
) -> str | None:
    """One line saying that the dataset and the model name the same ids differently, else None.

    A model's ids mean its own classes; the masks' ids mean the dataset's. When both name the
    same number of classes differently (e.g. a conversion script sorted ``classes.txt``
    alphabetically), the scores are meaningless unless the masks follow the model's order, and
    a table under the dataset's names alone hides that. Renamed classes are legitimate, so this
    is a note, not a refusal. Generic names (``class_0`` ...) on either side say nothing about
    the classes: no note.

    Args:
        dataset_names: the names the table uses (``dataset.info.class_names``).
        model_names: the names stored in the model file (``model.dataset_info.class_names``).
        source: where the dataset's names come from, for the message (e.g. its classes.txt).
    """
    generic = has_placeholder_names(dataset_names) or has_placeholder_names(model_names)
    if len(dataset_names) != len(model_names) or generic:
        return None
    differ = [i for i, (a, b) in enumerate(zip(dataset_names, model_names, strict=True)) if a != b]
    if not differ:
        return None
    first = differ[0]
    return (
        f"note: {source} lists class {first} as {dataset_names[first]!r} but the model calls it "
        f"{model_names[first]!r} ({len(differ)} of {len(model_names)} names differ); the table uses the "
        f"dataset's names; check that the masks use the model's class order"
    )


def _rank_and_world(distributed: bool | None) -> tuple[int, int]:
    active = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not active:
        raise InputError("distributed=True but torch.distributed is not initialised")
    if active and distributed is not False:
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate(
    model: nn.Module,
    dataset: EvalDataset,
    *,
    mode: str = "whole",
    crop_size: int | None = None,
    stride_rate: float = 2 / 3,
    scales: Sequence[float] = (1.0,),
    base_size: int | None = None,
    flip: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    boundary: bool = False,
    amp_dtype: torch.dtype | None = None,
    keep_examples: int = 0,
) -> EvalResult:
    """Score ``model`` on ``dataset`` with the authors' protocol; metrics over the whole dataset.

    Args:
        model: a PSPNet (moved to ``device`` if given).
        dataset: see :class:`EvalDataset`; images without a mask are skipped (nothing to score).
        mode, crop_size, stride_rate, scales, base_size, flip, batch_size: as in
            :func:`pspnet.engine.inference.predict_probs`; ``crop_size`` defaults to
            :func:`protocol_crop_size`. ``base_size=None`` uses each image at its own size; the
            authors resize every image of their datasets to the dataset's base size at scale 1.0:
            pass ``base_size=protocol_base_size(dataset)`` for their protocol (``pspnet eval`` and
            validation during training do).
        device: where to run; default: where the model is.
        progress: show a tqdm progress bar (rank 0 only).
        distributed: None = shard over ranks when torch.distributed is initialised; False = never.
        limit: evaluate only the first ``limit`` images (quick checks).
        boundary: also compute the boundary F-score (:class:`pspnet.engine.boundary.BoundaryFScore`,
            default tolerance) into ``EvalResult.boundary``; costs a CPU pass per image and class.
        amp_dtype: bf16/fp16 autocast of the network on CUDA (``predict_probs``); None = fp32.
        keep_examples: keep this process's first N images with their predictions in
            ``EvalResult.examples`` (the training log shows them in TensorBoard).

    Raises:
        InputError: the model's class count differs from the dataset's, or bad settings (checked
            before the first image, so a setting is never blamed on an image).
        DataError: an image the network cannot take (e.g. smaller than 8x8 in whole mode), named.
    """
    info = dataset.info
    num_classes = int(getattr(model, "num_classes", info.num_classes))
    if num_classes != info.num_classes:
        raise InputError(
            f"the model predicts {num_classes} classes but dataset {info.name!r} has {info.num_classes}; "
            "evaluate a model trained for this dataset"
        )
    # Settings are checked here, once: inside the loop a ValueError is a problem of the image.
    scales = check_settings(
        mode=mode,
        crop_size=crop_size,
        stride_rate=stride_rate,
        scales=scales,
        base_size=base_size,
        batch_size=batch_size,
    )
    if mode == "slide" and crop_size is None:
        crop_size = protocol_crop_size(model, dataset)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    check_amp_dtype(amp_dtype, run_device)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = _rank_and_world(distributed)
    indices = range(rank, total, world)
    confusion = ConfusionMatrix(num_classes, info.ignore_index, device=run_device)
    edges = BoundaryFScore(num_classes, info.ignore_index) if boundary else None
    iterator: Any = indices
    if progress and rank == 0:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="eval", unit="img", dynamic_ncols=True)
    scored = 0
    examples: list[EvalExample] = []
    for index in iterator:
        image, mask = dataset.load_raw(index)
        if mask is None:
            continue
        try:
            probs = predict_probs(
                model,
                image,
                mode=mode,
                crop_size=crop_size,
                stride_rate=stride_rate,
                scales=scales,
                base_size=base_size,
                flip=flip,
                batch_size=batch_size,
                to_cpu=False,
                amp_dtype=amp_dtype,
            )
        except DataError:
            raise
        except ValueError as exc:  # the network refuses this image (e.g. smaller than 8x8)
            raise DataError(f"{_sample_name(dataset, index)}: {exc}; --mode slide pads small images") from exc
        pred = probs.argmax(dim=0)
        confusion.update(pred, torch.from_numpy(np.ascontiguousarray(mask)).to(run_device))
        if len(examples) < keep_examples:
            examples.append(EvalExample(int(index), image, mask, pred.cpu().numpy()))
        if edges is not None:
            edges.update(pred.cpu().numpy(), mask)
        scored += 1
    confusion.all_reduce()
    if edges is not None and world > 1:
        counts = torch.from_numpy(edges.counts).to(run_device)
        torch.distributed.all_reduce(counts)
        edges.counts = counts.cpu().numpy()
    if world > 1:
        count = torch.tensor([scored], dtype=torch.int64, device=run_device)
        torch.distributed.all_reduce(count)
        scored = int(count.item())
    matrix = confusion.numpy()
    settings = {
        "mode": mode,
        "crop_size": crop_size,
        "stride_rate": stride_rate,
        "scales": [float(s) for s in scales],
        "base_size": base_size,
        "flip": bool(flip),
        "dataset": info.name,
        "num_classes": num_classes,
        "ignore_index": info.ignore_index,
        "limit": limit,
        "world_size": world,
        "boundary": boundary,
    }
    return EvalResult(
        metrics=metrics_from_confusion(matrix),
        confusion=matrix,
        class_names=list(info.class_names),
        settings=settings,
        num_images=scored,
        boundary=edges.compute() if edges is not None else None,
        examples=examples,
    )


def _sample_name(dataset: EvalDataset, index: int) -> str:
    """The file behind sample ``index`` when the dataset lists its samples, else ``sample <index>``."""
    samples = getattr(dataset, "samples", None)
    try:
        return str(samples[index].image)  # type: ignore[index]
    except (TypeError, IndexError, AttributeError, KeyError):
        return f"sample {index}"
