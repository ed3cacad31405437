"""Check a whole dataset before training on it, and summarise what is in it.

Training crashes (or, worse, silently learns nothing) on bad masks: labels past ``num_classes``
trigger a device-side assert hours in, and binary masks saved as 0/255 make every foreground
pixel the ignore label. :func:`verify_dataset` reads every pair once and reports all of it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pspnet.data.datasets import SegmentationDataset, bad_label_message, size_mismatch_message
from pspnet.data.imageio import image_orientation, read_image
from pspnet.errors import DataError

__all__ = ["VerifyReport", "verify_dataset"]

_SHOWN_PROBLEMS = 50
_CITYSCAPES_MAX_LABEL_ID = 33  # labelIds files hold 0..33 (license plates, id -1, are not drawn)
_BINARY_MIN_IGNORE_SHARE = 0.01  # 0/255 masks: the ignore value covers at least 1% of the pixels ...
_BINARY_MAX_CLASS_RATIO = 0.01  # ... and classes 1.. together hold under 1% of what it covers


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`.

    Attributes:
        dataset: dataset name; ``root`` where it lives.
        num_samples: pairs in the dataset; ``num_checked`` pairs read (``max_files``).
        class_names: names in id order; ``class_pixels`` pixel count per class id.
        ignore_pixels: pixels with the ignore label; ``ignore_index`` its value.
        sizes: ``"WxH" -> number of images``.
        problems: ``(path, message)`` for every problem found.
        notes: remarks that are not problems: hidden files skipped while listing, images whose
            EXIF orientation tag rotates them (their masks must match the rotated image).
    """

    dataset: str
    root: str
    num_samples: int
    num_checked: int
    class_names: tuple[str, ...]
    ignore_index: int
    class_pixels: list[int]
    ignore_pixels: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "num_samples": self.num_samples,
            "num_checked": self.num_checked,
            "ignore_index": self.ignore_index,
            "ignore_pixels": self.ignore_pixels,
            "class_pixels": dict(zip(self.class_names, self.class_pixels, strict=True)),
            "sizes": self.sizes,
            "problems": [{"path": p, "message": m} for p, m in self.problems],
            "notes": list(self.notes),
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def format(self, max_problems: int = _SHOWN_PROBLEMS) -> str:
        """Human-readable report: problems first (at most ``max_problems``), then the summary."""
        lines = [f"{p}: {m}" for p, m in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"... and {len(self.problems) - max_problems} more problems (see --json)")
        lines.append(
            f"dataset {self.dataset} at {self.root}: {self.num_checked} of {self.num_samples} pairs checked, "
            f"{len(self.problems)} problem(s)"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        labelled = sum(self.class_pixels) + self.ignore_pixels
        lines.append("pixels per class:")
        width = max((len(n) for n in self.class_names), default=5)
        for cid, (name, count) in enumerate(zip(self.class_names, self.class_pixels, strict=True)):
            share = 100.0 * count / labelled if labelled else 0.0
            lines.append(f"  {cid:>4} {name:<{width}} {count:>12} {share:6.2f}%")
        share = 100.0 * self.ignore_pixels / labelled if labelled else 0.0
        lines.append(f"  {self.ignore_index:>4} {'(ignore)':<{width}} {self.ignore_pixels:>12} {share:6.2f}%")
        lines.append("image sizes (WxH: count):")
        for size, count in sorted(self.sizes.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {size}: {count}")
        if len(self.sizes) > 10:
            lines.append(f"  ... {len(self.sizes) - 10} more sizes")
        return "\n".join(lines)


def verify_dataset(
    dataset: SegmentationDataset, *, max_files: int | None = None, progress: bool = True
) -> VerifyReport:
    """Read every image/mask pair of ``dataset`` and report problems plus label statistics.

    Checks: unreadable/truncated images and masks, RGB colour masks, image/mask size mismatch,
    label values outside ``[0, num_classes)`` other than the ignore index (reported as the values
    stored in the files), masks that look like binary 0/255 (see :func:`_looks_binary_255`),
    Cityscapes ``*_labelIds.png`` files holding values past 33 (trainIds saved under the labelIds
    name), and the layout problems (missing pairs, duplicate stems) found when the dataset was
    opened with ``strict=False``.
    """
    info = dataset.info
    count = len(dataset) if max_files is None else min(len(dataset), max_files)
    report = VerifyReport(
        dataset=info.name,
        root=str(dataset.root),
        num_samples=len(dataset),
        num_checked=count,
        class_names=info.class_names,
        ignore_index=info.ignore_index,
        class_pixels=[0] * info.num_classes,
        problems=list(dataset.problems),
        notes=list(dataset.notes),
    )
    sizes: Counter[str] = Counter()
    rotated: list[tuple[Path, int]] = []  # images with an EXIF orientation other than 1
    seen_values: set[int] = set()
    for index in tqdm(range(count), desc="verify", unit="pair", disable=not progress, leave=False):
        sample = dataset.samples[index]
        try:
            image = read_image(sample.image, check_complete=True)
            orientation = image_orientation(sample.image)
            if orientation != 1:
                rotated.append((sample.image, orientation))
        except DataError as exc:
            report.problems.append((str(sample.image), _strip_path(str(exc), sample.image)))
            image = None
        try:
            raw = dataset.read_raw_mask(index)
        except DataError as exc:
            report.problems.append((str(sample.mask), _strip_path(str(exc), sample.mask)))
            continue
        if raw is None:
            continue
        if image is not None:
            sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            if raw.shape != image.shape[:2]:
                report.problems.append(
                    (str(sample.mask), size_mismatch_message(raw.shape, image.shape, sample.image))
                )
        if dataset.kind == "cityscapes":
            _check_cityscapes_label_ids(raw, sample.mask, report)
        _count_labels(dataset, raw, sample.mask, report, seen_values)
    if dataset.label_map is None and info.ignore_index == 255:
        if seen_values == {0, 255} and report.num_checked:
            report.problems.append(
                (
                    str(dataset.root),
                    "every mask has values {0, 255} only: binary masks stored as 0/255? 255 is the ignore "
                    "label, so all foreground would be ignored; map 255 -> 1 (mask // 255) and use "
                    "num_classes=2",
                )
            )
        elif _looks_binary_255(report):
            total = sum(report.class_pixels) + report.ignore_pixels
            report.problems.append(
                (
                    str(dataset.root),
                    f"masks look binary 0/255: 255 (the ignore label) covers "
                    f"{100.0 * report.ignore_pixels / total:.1f}% of the pixels but classes 1 and up only "
                    f"{sum(report.class_pixels[1:])} px, so the foreground would be ignored; map 255 -> 1 "
                    f"(mask // 255, after fixing the stray values) and use num_classes=2",
                )
            )
    report.sizes = dict(sizes)
    if rotated:
        report.notes.append(_rotation_note(rotated))
    return report


def _rotation_note(rotated: list[tuple[Path, int]]) -> str:
    """Images are read rotated by their EXIF tag and masks are not, so a mask drawn on the stored
    pixels is misaligned; only a size mismatch reveals that, never for square images or for
    tags that only mirror. Worth a line whenever such images exist."""
    path, orientation = rotated[0]
    return (
        f"{len(rotated)} image(s) carry an EXIF orientation tag (e.g. {path}: orientation {orientation}) "
        f"and are read rotated or mirrored, as viewers show them; their masks must be drawn on the "
        f"image as shown: a mask drawn on the stored pixels is misaligned, which the size check "
        f"catches only for non-square images turned by a quarter"
    )


def _looks_binary_255(report: VerifyReport) -> bool:
    """Binary masks saved as 0/255 with a few stray values (anti-aliasing, a resize).

    The exact ``{0, 255}`` test misses them. Their signature: 255 covers a real share of the
    pixels (the foreground) while all classes but 0 together are a sliver of that. Datasets that
    use 255 for void (VOC's thin borders, Cityscapes' unlabelled regions) have their objects in
    classes 1 and up, many times the void pixels, so they stay clear of it.
    """
    total = sum(report.class_pixels) + report.ignore_pixels
    if not total or report.ignore_pixels < _BINARY_MIN_IGNORE_SHARE * total:
        return False
    return sum(report.class_pixels[1:]) < _BINARY_MAX_CLASS_RATIO * report.ignore_pixels


def _check_cityscapes_label_ids(raw: np.ndarray, mask_path: Path | None, report: VerifyReport) -> None:
    """Real labelIds are 0..33; a 255 (or any value past 33) means a labelTrainIds image (0..18 and
    255) saved under the labelIds name, which the labelId -> trainId table would silently scramble
    (road, trainId 0, would become ignore; trainId 7 would become road)."""
    values, counts = np.unique(raw[raw > _CITYSCAPES_MAX_LABEL_ID], return_counts=True)
    if not values.size:
        return
    shown = ", ".join(f"{v} ({n} px)" for v, n in zip(values[:8].tolist(), counts[:8].tolist(), strict=True))
    report.problems.append(
        (
            str(mask_path),
            f"label values {shown} in a labelIds file, where Cityscapes labelIds are 0..33: a labelTrainIds "
            f"image saved as *_labelIds.png? Use the *_gtFine_labelIds.png files from gtFine",
        )
    )


def _strip_path(message: str, path: Path | None) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _count_labels(
    dataset: SegmentationDataset,
    raw: np.ndarray,
    mask_path: Path | None,
    report: VerifyReport,
    seen_values: set[int],
) -> None:
    mapped = dataset.map_mask(raw)
    num_classes, ignore = len(report.class_pixels), report.ignore_index
    values, counts = np.unique(mapped, return_counts=True)
    seen_values.update(int(v) for v in values)
    bad = False
    for value, n in zip(values.tolist(), counts.tolist(), strict=True):
        if value == ignore:  # first: an ignore value inside [0, C) is still ignored, not a class
            report.ignore_pixels += n
        elif 0 <= value < num_classes:
            report.class_pixels[value] += n
        else:
            bad = True
    if bad:
        message = bad_label_message(raw, mapped, dataset.info, dataset.label_map)
        report.problems.append((str(mask_path), f"{message}; check num_classes or the label mapping"))
