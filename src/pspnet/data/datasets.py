"""Segmentation datasets read straight from their published on-disk layouts.

One :class:`SegmentationDataset` class serves every layout: a loader function only builds the list
of ``(image, mask)`` file pairs and the label mapping (Cityscapes labelIds -> trainIds, ADE20K
``k -> k-1``), so reading, mapping, augmenting and seeding behave identically for all of them.

Layouts (``open_dataset(root, kind=...)``):

* ``voc2012``: ``VOCdevkit/VOC2012`` with ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs) and
  ``ImageSets/Segmentation/{train,val,trainval}.txt``. ``split="trainaug"`` reads the SBD-augmented
  masks ``SegmentationClassAug/`` listed in ``ImageSets/Segmentation/trainaug.txt`` (or
  ``train_aug.txt``; lines may be ids or ``"/JPEGImages/x.jpg /SegmentationClassAug/x.png"``).
* ``cityscapes``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, labelIds mapped to the 19 trainIds.
* ``ade20k``: ``ADEChallengeData2016`` with ``images/{training,validation}/*.jpg`` +
  ``annotations/{training,validation}/*.png`` (``split`` "train"/"val"); 0 -> 255, k -> k-1.
* ``folder``: ``root/images/*`` + ``root/masks/*`` paired by file stem, or
  ``root/images/<split>/`` + ``root/masks/<split>/`` when those exist (a flat folder serves every
  split). Masks must be lossless (PNG, BMP, PGM, TIFF). Class names come from ``info=``, else
  ``root/dataset.json`` (the :class:`DatasetInfo` fields, as ``pspnet make-demo-data`` writes),
  else ``root/classes.txt`` (one name per line), else ``num_classes=`` (names ``class_0`` ...).
  When ``info=`` is given and such a file exists, a different class count is refused (the file
  and the named label space describe different datasets); the same count with other names only
  warns (``info=`` wins: it is the label space the caller asked for).
* ``list``: ``root`` is a text file, one ``"image_path mask_path"`` per line (the authors' format),
  relative to ``data_root`` (default: the list file's folder); paths that contain spaces need a
  TAB between the two (a line with a TAB is split at TABs only). Relative paths may not climb out
  of ``data_root`` with ``..``; absolute paths are taken as given. The list file *is* the split: open
  the validation list as its own dataset (``split`` must stay ``"train"``). ``dataset.json`` /
  ``classes.txt`` are looked up beside the list file, then in ``data_root``.

The ignore label is 255 for the public layouts (their void pixels are mapped to it); folder and
list datasets may choose another (``ignore_index=``), which becomes ``dataset.info.ignore_index``.
It may not be a class id (``0..C-1``): that class would never be trained nor scored, so
``open_dataset`` refuses it.

Hidden files (names starting with ``.``) are never taken from a folder: the ``._name`` files that
macOS writes beside every file copied to a USB stick, an SMB share or a zip are metadata with the
data file's suffix, and ``.DS_Store`` is not data either. Their count is kept in
``dataset.notes`` (``verify-dataset`` prints it).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pspnet.data.imageio import IMAGE_EXTENSIONS, MASK_EXTENSIONS, image_orientation, read_image, read_mask
from pspnet.data.info import (
    ADE20K,
    CITYSCAPES,
    IGNORE_INDEX,
    VOC2012,
    DatasetInfo,
    colour_mask_palette,
    default_palette,
    has_placeholder_names,
    placeholder_names,
)
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import DataError, InputError

__all__ = [
    "CITYSCAPES_LABEL_TO_TRAIN",
    "DATASET_KINDS",
    "LabelMap",
    "Sample",
    "SegmentationDataset",
    "ade20k_label_map",
    "bad_label_message",
    "cityscapes_lut",
    "detect_kind",
    "open_dataset",
    "size_mismatch_message",
]

DATASET_KINDS = ("auto", "voc2012", "cityscapes", "ade20k", "folder", "list")

CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""Official cityscapesScripts ``labels.py``: labelId -> trainId; every other id -> 255."""

LabelMap = Callable[[np.ndarray], np.ndarray] | np.ndarray
"""A function of the raw mask, or a lookup table indexed by raw value (values past its end -> ignore)."""

_MAX_IGNORE_INDEX = 65535
_MAPPED_KINDS = ("voc2012", "cityscapes", "ade20k")

_MAX_LISTED = 5
_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that exchange width and height


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``None`` for unlabelled images); ``name`` is the id / file stem."""

    image: Path
    mask: Path | None
    name: str


def cityscapes_lut() -> np.ndarray:
    """Lookup table (256 entries) from Cityscapes labelIds to trainIds."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def ade20k_label_map(mask: np.ndarray) -> np.ndarray:
    """ADE20K SceneParsing: 0 ("other") -> 255, k -> k - 1."""
    out = mask.astype(np.int64) - 1
    out[mask == 0] = IGNORE_INDEX
    return out


def _uint8_table(label_map: LabelMap | None, ignore: int = IGNORE_INDEX) -> np.ndarray | None:
    """The label map as a 256-entry uint8 table for 8-bit masks, when every entry fits in uint8.

    None for maps that are not element-wise tables (a user's function), that produce ids above
    255, or when the ignore value itself is above 255: those go through :func:`_apply_label_map`
    in int64 (a uint8 mask could not hold the ignore value the augmentation pads with).
    """
    if not 0 <= ignore <= 255:
        return None
    if label_map is None:
        return np.arange(256, dtype=np.uint8)
    if label_map is ade20k_label_map:
        values = ade20k_label_map(np.arange(256))
    elif callable(label_map):
        return None
    else:
        lut = np.asarray(label_map, dtype=np.int64)
        values = np.full(256, ignore, dtype=np.int64)
        values[: min(len(lut), 256)] = lut[:256]
    if values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8)


def _apply_label_map(mask: np.ndarray, label_map: LabelMap | None, ignore: int = IGNORE_INDEX) -> np.ndarray:
    if label_map is None:
        return mask.astype(np.int64, copy=False)
    if callable(label_map):
        return np.asarray(label_map(mask), dtype=np.int64)
    lut = np.asarray(label_map, dtype=np.int64)
    if mask.size and int(mask.max()) >= len(lut):
        return np.where(mask < len(lut), lut[np.minimum(mask, len(lut) - 1)], ignore)
    return lut[mask]


def _mapping_note(label_map: LabelMap | None) -> str:
    """How file values become train ids, for messages that show both."""
    if label_map is ade20k_label_map:
        return "ADE20K's shift: file value 0 -> ignore, k -> k-1"
    return "the label mapping"


def bad_label_message(
    raw: np.ndarray, mapped: np.ndarray, info: DatasetInfo, label_map: LabelMap | None
) -> str | None:
    """``"label values 7 (16 px), ... outside [0, C) and not the ignore value I"``, or None if all fit.

    Values are the ones stored in the file, so a user can find those pixels; when a label map
    turns them into other train ids, those are named too (an ADE20K file value 151 is train id 150).
    """
    num_classes, ignore = info.num_classes, info.ignore_index
    bad = (mapped != ignore) & ((mapped < 0) | (mapped >= num_classes))
    if not bad.any():
        return None
    values, counts = np.unique(raw[bad], return_counts=True)
    shown = ", ".join(f"{v} ({n} px)" for v, n in zip(values[:8].tolist(), counts[:8].tolist(), strict=True))
    more = f" and {len(values) - 8} more" if len(values) > 8 else ""
    where = ""
    if label_map is not None:
        ids = sorted({int(v) for v in np.unique(mapped[bad])})
        where = f" in the file (train ids {ids[:8]} after {_mapping_note(label_map)})"
    return f"label values {shown}{more}{where} outside [0, {num_classes}) and not the ignore value {ignore}"


def size_mismatch_message(mask_shape: Sequence[int], image_shape: Sequence[int], image: Path | str) -> str:
    """``"mask is WxH but the image <image> is W'xH'"`` plus the cause when EXIF rotation explains it.

    Images are read as viewers show them, their EXIF orientation applied; masks never are. A
    mask drawn on the stored (unrotated) pixels of a sideways phone photo then has the image's
    sides swapped, while both files look the same size in every file browser: the message says so.
    """
    mh, mw, ih, iw = int(mask_shape[0]), int(mask_shape[1]), int(image_shape[0]), int(image_shape[1])
    message = f"mask is {mw}x{mh} but the image {image} is {iw}x{ih}"
    if (mh, mw) == (iw, ih):
        orientation = image_orientation(image)
        if orientation in _SWAPPING_ORIENTATIONS:
            return (
                f"{message}: it is stored {mw}x{mh} and shown {iw}x{ih} after its EXIF "
                f"orientation {orientation}; masks must match the image as shown (rotate the mask), or "
                f"strip the orientation tag from the image"
            )
    return f"{message}; masks must have the image's size"


class _Problems:
    """Collects layout problems (missing pairs, duplicates) so they can be raised together or reported."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.hidden: dict[Path, int] = {}  # folder -> hidden files with a data suffix, not taken
        self.hint = ""  # the likely fix, appended when the problems are raised

    def add(self, path: Path | str, message: str) -> None:
        self.items.append((str(path), message))

    def skip_hidden(self, path: Path) -> None:
        self.hidden[path.parent] = self.hidden.get(path.parent, 0) + 1

    def notes(self) -> list[str]:
        if not self.hidden:
            return []
        where = ", ".join(f"{n} in {folder}" for folder, n in list(self.hidden.items())[:_MAX_LISTED])
        more = f" and {len(self.hidden) - _MAX_LISTED} more folders" if len(self.hidden) > _MAX_LISTED else ""
        return [
            f"skipped {sum(self.hidden.values())} hidden file(s) with image suffixes ({where}{more}): names "
            f"starting with '.', such as the '._*' metadata files macOS writes beside copied files, are "
            f"never data"
        ]

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        listed = "; ".join(f"{p}: {m}" for p, m in self.items[:_MAX_LISTED])
        more = f" (and {len(self.items) - _MAX_LISTED} more)" if len(self.items) > _MAX_LISTED else ""
        raise DataError(
            f"{what}: {len(self.items)} problem(s): {listed}{more}; {self.hint or 'fix the files'}, or run "
            f"`pspnet verify-dataset` for the full list"
        )


class SegmentationDataset(Dataset):
    """Image/mask pairs with label mapping, paired augmentation and per-sample seeding.

    Args:
        samples: the file pairs.
        info: class names, palette and ignore index of the label space.
        label_map: raw mask -> train ids (function or lookup table); None keeps values.
        transform: paired transform ``t(image, mask, rng)``; None returns the whole image.
        seed: base of the augmentation seed ``(seed, epoch, index)``.
        preprocess: normalisation used when the transform leaves numpy arrays (or is None).
        mask_palette: RGB colour per class id, to accept colour masks (``read_mask(palette=)``).
        root: where the dataset lives (for messages).
        problems: layout problems found while listing (kept when not strict; see verify).
        notes: remarks on the listing that are not problems (hidden files skipped), for reports.
        kind: the layout it was read from (``open_dataset``'s kinds; ``"custom"`` when built by
            hand). The evaluation protocol depends on it, not on the label space's name: a folder
            named ``cityscapes`` is still a folder dataset.
        class_names_file: the ``dataset.json`` / ``classes.txt`` the class names were read from,
            so messages about the names can point at the file to edit; None when they came from
            ``info=``, an authors' layout or a class count.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        info: DatasetInfo,
        *,
        label_map: LabelMap | None = None,
        transform: Callable[..., Any] | None = None,
        seed: int = 0,
        preprocess: Preprocess = PYTORCH_PREPROCESS,
        mask_palette: Sequence[Sequence[int]] | None = None,
        root: Path | None = None,
        problems: Sequence[tuple[str, str]] = (),
        notes: Sequence[str] = (),
        kind: str = "custom",
        class_names_file: Path | None = None,
    ) -> None:
        if seed < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        self.samples = list(samples)
        self.info = info
        self.label_map = label_map
        self.transform = transform
        self.seed = int(seed)
        self.preprocess = preprocess
        self.mask_palette = mask_palette
        self.root = root
        self.problems = list(problems)
        self.notes = list(notes)
        self.kind = kind
        self.class_names_file = class_names_file
        self.epoch = 0
        self._table8 = _uint8_table(label_map, info.ignore_index)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, {len(self)} samples, root={str(self.root)!r})"

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of this epoch (call before iterating each epoch)."""
        if epoch < 0:
            raise InputError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def read_raw_mask(self, index: int) -> np.ndarray | None:
        """The mask as stored on disk (before label mapping), or None for unlabelled samples."""
        sample = self.samples[index]
        return None if sample.mask is None else read_mask(sample.mask, palette=self.mask_palette)

    def map_mask(self, raw: np.ndarray) -> np.ndarray:
        """Raw mask values -> train ids (int64, ``[0, C)`` or the ignore index)."""
        return _apply_label_map(raw, self.label_map, self.info.ignore_index)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image RGB uint8 ``(H, W, 3)`` and mask int64 ``(H, W)`` already mapped to train ids.

        Raises:
            DataError: unreadable files, image/mask size mismatch, or label values outside
                ``[0, num_classes)`` other than the ignore index (which would crash the loss).
        """
        image, mask = self._load(index)
        return image, None if mask is None else mask.astype(np.int64, copy=False)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`load_raw` with the mask in uint8 when the stored mask and the label map allow
        (a table lookup and a histogram instead of three passes over an int64 copy)."""
        sample = self.samples[index]
        image = read_image(sample.image)
        raw = self.read_raw_mask(index)
        if raw is None:
            return image, None
        if raw.shape != image.shape[:2]:
            raise DataError(f"{sample.mask}: {size_mismatch_message(raw.shape, image.shape, sample.image)}")
        num_classes, ignore = self.info.num_classes, self.info.ignore_index
        if raw.dtype == np.uint8 and self._table8 is not None:
            mask = cv2.LUT(raw, self._table8)
            counts = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()
            bad = any(v >= num_classes and v != ignore for v in np.flatnonzero(counts).tolist())
        else:
            mask = self.map_mask(raw)
            valid = mask[mask != ignore]
            bad = bool(valid.size) and (int(valid.max()) >= num_classes or int(valid.min()) < 0)
        if bad:  # the slow part (which file values, how many pixels) only for the error message
            message = bad_label_message(raw, self.map_mask(raw), self.info, self.label_map)
            raise DataError(
                f"{sample.mask}: {message}; check num_classes or the masks (`pspnet verify-dataset`)"
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        compact = self.transform is None or getattr(self.transform, "compact_masks", False)
        image, mask = self._load(index) if compact else self.load_raw(index)
        if mask is None:
            small = compact and self._table8 is not None  # uint8 only when the ignore value fits
            mask = np.full(image.shape[:2], self.info.ignore_index, dtype=np.uint8 if small else np.int64)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            image, mask = self.transform(image, mask, rng)
        if isinstance(image, np.ndarray):
            image = self.preprocess.to_tensor(image)
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        return {"image": image, "mask": mask, "index": int(index)}


# ----------------------------------------------------------------------------- layouts


def _files_by_stem(folder: Path, extensions: Sequence[str], problems: _Problems) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.name.startswith("."):  # macOS '._x.jpg' metadata and the like (module docstring)
            problems.skip_hidden(path)
            continue
        if path.stem in found:
            problems.add(path, f"duplicate stem {path.stem!r} (also {found[path.stem].name}); keep one file")
            continue
        found[path.stem] = path
    return found


def _read_ids(list_file: Path) -> list[str]:
    ids = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:  # "2007_000032" or "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png"
            ids.append(Path(parts[0]).stem)
    return ids


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


def _voc_samples(root: Path, split: str, problems: _Problems) -> list[Sample]:
    given, root = root, _voc_root(root)
    if not (root / "JPEGImages").is_dir():
        raise DataError(
            f"{given}: not a VOC2012 folder: no JPEGImages/ in it, in VOC2012/ or in VOCdevkit/VOC2012/"
        )
    sets = root / "ImageSets" / "Segmentation"
    if split in ("trainaug", "train_aug"):
        candidates = [sets / "trainaug.txt", sets / "train_aug.txt"]
        mask_dir = root / "SegmentationClassAug"
    else:
        candidates = [sets / f"{split}.txt"]
        mask_dir = root / "SegmentationClass"
    list_file = next((c for c in candidates if c.is_file()), None)
    if list_file is None:
        raise DataError(
            f"{candidates[0]}: split list not found; VOC splits are train, val, trainval and trainaug "
            f"(SBD masks in SegmentationClassAug/ with ImageSets/Segmentation/trainaug.txt)"
        )
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found for VOC split {split!r}")
    samples = []
    for name in _read_ids(list_file):
        image, mask = root / "JPEGImages" / f"{name}.jpg", mask_dir / f"{name}.png"
        missing = [p for p in (image, mask) if not p.is_file()]
        for path in missing:
            problems.add(path, f"listed in {list_file.name} but missing")
        if not missing:
            samples.append(Sample(image, mask, name))
    return samples


def _cityscapes_samples(root: Path, split: str, problems: _Problems) -> list[Sample]:
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: Cityscapes split folder not found (splits: train, val, test)")
    samples = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        if image.name.startswith(".") or image.parent.name.startswith("."):
            problems.skip_hidden(image)
            continue
        name = image.name[: -len("_leftImg8bit.png")]
        mask = gt_dir / image.parent.name / f"{name}_gtFine_labelIds.png"
        if mask.is_file():
            samples.append(Sample(image, mask, name))
        else:
            problems.add(mask, f"missing label file for {image.name}")
    return samples


def _ade20k_root(root: Path) -> Path:
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() and not (root / "annotations").is_dir() else root


def _paired_folders(image_dir: Path, mask_dir: Path, problems: _Problems) -> list[Sample]:
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS, problems)
    masks = _files_by_stem(mask_dir, MASK_EXTENSIONS, problems)
    unusable = _files_by_stem(mask_dir, tuple(set(IMAGE_EXTENSIONS) - set(MASK_EXTENSIONS)), _Problems())
    for stem in sorted(images.keys() - masks.keys()):
        if stem in unusable:
            problems.add(unusable[stem], f"mask {_lossy_note(unusable[stem])}; save masks as PNG")
        else:
            problems.add(images[stem], f"no mask with stem {stem!r} in {mask_dir}")
    for stem in sorted(masks.keys() - images.keys()):
        problems.add(masks[stem], f"no image with stem {stem!r} in {image_dir}")
    return [Sample(images[s], masks[s], s) for s in sorted(images.keys() & masks.keys())]


def _lossy_note(path: Path) -> str:
    if path.suffix.lower() in _JPEG_SUFFIXES:
        return "is a JPEG, whose lossy compression changes label values along every edge"
    return f"has suffix {path.suffix}, not a lossless mask format ({', '.join(MASK_EXTENSIONS)})"


_ADE_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _ade20k_samples(root: Path, split: str, problems: _Problems) -> list[Sample]:
    root = _ade20k_root(root)
    if split not in _ADE_SPLITS:
        raise InputError(f"ADE20K split must be 'train' or 'val', got {split!r}")
    sub = _ADE_SPLITS[split]
    return _paired_folders(root / "images" / sub, root / "annotations" / sub, problems)


def _folder_samples(root: Path, split: str | None, problems: _Problems) -> list[Sample]:
    image_dir, mask_dir = root / "images", root / "masks"
    if split and (image_dir / split).is_dir():
        image_dir, mask_dir = image_dir / split, mask_dir / split
    return _paired_folders(image_dir, mask_dir, problems)


def _list_samples(list_file: Path, data_root: Path, problems: _Problems, root_given: bool) -> list[Sample]:
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    base = data_root.resolve()
    samples = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        parts = _list_fields(line)
        if not parts:
            continue
        if len(parts) != 2:
            hint = ""
            if len(parts) > 2 and "\t" not in line:
                hint = "; a path with spaces needs a TAB between the image and the mask path (or rename it)"
            raise DataError(
                f"{list_file}:{number}: expected 'image_path mask_path', got {len(parts)} field(s): "
                f"{line!r}{hint}"
            )
        paths = []
        for field_text in parts:
            raw = Path(field_text)
            path = raw if raw.is_absolute() else data_root / raw
            if not raw.is_absolute() and not path.resolve().is_relative_to(base):
                raise DataError(
                    f"{list_file}:{number}: {field_text!r} points outside the data root {data_root}; "
                    f"use an absolute path if that is intended"
                )
            paths.append(path)
        missing = [p for p in paths if not p.is_file()]
        for path in missing:
            problems.add(path, f"listed at {list_file.name}:{number} but missing")
        if missing and not root_given:
            problems.hint = (
                "the paths are read relative to the list file's folder: if they are relative to another "
                "folder (the dataset root), give it as the data root (--data-root DIR, data.data_root)"
            )
        if not missing:
            samples.append(Sample(paths[0], paths[1], Path(parts[0]).stem))
    return samples


def _list_fields(line: str) -> list[str]:
    """The fields of a list-file line: split at TABs when it has one (paths with spaces), else at
    any whitespace (the authors' format). A line of the authors' format has no TAB inside a path,
    and a TAB-separated one has no other separator, so the two cannot be confused."""
    line = line.strip()
    if "\t" in line:
        return [field.strip() for field in line.split("\t") if field.strip()]
    return line.split()


def _read_class_names(path: Path) -> tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise DataError(f"{path}: no class names (one per line expected)")
    return names


def _read_info_json(path: Path) -> DatasetInfo | None:
    """The label space in ``dataset.json`` (DatasetInfo fields at top level), or None when the
    file is absent or is some other tool's ``dataset.json`` (no ``class_names``)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict) or "class_names" not in data:
        return None
    try:
        if "palette" not in data:
            data = {**data, "palette": default_palette(len(data["class_names"]))}
        return DatasetInfo.from_dict({"name": path.parent.name, **data})
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a valid dataset description ({exc}); fix or remove it") from None


def _label_space_file(folder: Path) -> tuple[Path, DatasetInfo | None, tuple[str, ...]] | None:
    """The class names stored with the data: ``dataset.json`` first (it can carry a palette and
    sizes), else ``classes.txt``; ``(file, info or None, names)``, or None when neither exists."""
    json_path, classes_file = folder / "dataset.json", folder / "classes.txt"
    stored = _read_info_json(json_path)
    if stored is not None:
        return json_path, stored, stored.class_names
    if classes_file.is_file():
        return classes_file, None, _read_class_names(classes_file)
    return None


def _custom_info(
    name: str, info: DatasetInfo | None, num_classes: int | None, folder: Path
) -> tuple[DatasetInfo, Path | None]:
    """The label space of a folder or list dataset and the file its class names were read from
    (None when they came from ``info`` or ``num_classes``)."""
    stored = _label_space_file(folder)
    if info is not None:
        if num_classes is not None and num_classes != info.num_classes:
            raise InputError(
                f"num_classes={num_classes} contradicts info {info.name!r} ({info.num_classes} classes)"
            )
        if stored is not None:
            path, _, names = stored
            if len(names) != info.num_classes:
                raise InputError(
                    f"{path} lists {len(names)} classes but the dataset {info.name!r} named for it has "
                    f"{info.num_classes}; fix or remove {path.name}, or name the dataset whose classes "
                    f"the masks use"
                )
            if names != info.class_names:
                first = next(
                    i for i, (a, b) in enumerate(zip(names, info.class_names, strict=True)) if a != b
                )
                warnings.warn(
                    f"{path}: class {first} is {names[first]!r} but {info.class_names[first]!r} in the "
                    f"dataset {info.name!r} named for it; using the names of {info.name!r} "
                    f"(check that the masks use its class order)",
                    stacklevel=3,
                )
        return info, None
    if stored is not None:
        path, stored_info, names = stored
        if num_classes is not None and num_classes != len(names):
            raise InputError(f"num_classes={num_classes} but {path} lists {len(names)} classes")
        if stored_info is not None:
            return stored_info, path
        return DatasetInfo(name, names, default_palette(len(names))), path
    if num_classes is None:
        raise InputError(
            f"{name} dataset needs its classes: give the class count (model.num_classes in a training "
            f"config, --num-classes for verify-dataset, num_classes= in Python), name its dataset "
            f"(data.dataset, --dataset, info=), or write {folder / 'classes.txt'} with one class name "
            f"per line"
        )
    if not 1 <= num_classes <= 65535:
        raise InputError(f"num_classes must be in [1, 65535], got {num_classes}")
    return DatasetInfo(name, placeholder_names(num_classes), default_palette(num_classes)), None


def _resolve_mask_palette(
    mask_palette: Sequence[Sequence[int]] | str | None, kind: str
) -> Sequence[Sequence[int]] | None:
    if mask_palette is None:
        return None
    if kind in ("cityscapes", "ade20k"):
        raise InputError(
            f"a mask palette (--mask-palette / data.mask_palette) cannot be used with the {kind} layout: "
            f"its masks hold raw label values that the layout maps to train ids; use the single-channel "
            f"annotation files it ships"
        )
    if isinstance(mask_palette, str):
        try:
            return colour_mask_palette(mask_palette)
        except ValueError as exc:
            raise InputError(f"mask palette {mask_palette!r}: {exc}") from None
    return mask_palette


def _with_ignore_index(info: DatasetInfo, kind: str, ignore_index: int | None) -> DatasetInfo:
    if ignore_index is None:
        return info
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int | np.integer):
        raise InputError(f"ignore_index must be an integer, got {ignore_index!r}")
    if kind in _MAPPED_KINDS and ignore_index != IGNORE_INDEX:
        raise InputError(
            f"the {kind} layout maps void pixels to {IGNORE_INDEX}; ignore_index must be "
            f"{IGNORE_INDEX} for this layout, got {ignore_index}"
        )
    if not 0 <= ignore_index <= _MAX_IGNORE_INDEX:
        raise InputError(
            f"ignore_index must be in [0, {_MAX_IGNORE_INDEX}] (a value a mask file can hold), "
            f"got {ignore_index}"
        )
    if int(ignore_index) == info.ignore_index:
        return info
    return dataclasses.replace(info, ignore_index=int(ignore_index))


def _refuse_ignore_class(info: DatasetInfo, root: Path, names_file: Path | None) -> None:
    """An ignore index that is also a class id: that class would get no gradient and no ground
    truth, yet still be predicted and scored (IoU 0), so training and mIoU are silently wrong."""
    ignore, count = info.ignore_index, info.num_classes
    if not 0 <= ignore < count:
        return
    name = info.class_names[ignore]
    unnamed = names_file is None and has_placeholder_names(info.class_names)  # only a class count given
    if names_file is not None:
        source = str(names_file)
    else:
        source = f"{count} classes" if unnamed else f"the {info.name} classes"
    drop = f"use {count - 1} classes" if unnamed else f"remove {name!r} from the class list"
    if ignore < count - 1:  # the ids above it move down: the masks must say so
        drop += f" and rewrite the masks with ids 0..{count - 2} and the ignore value for those pixels"
    raise InputError(
        f"ignore index {ignore} is class {ignore} {name!r} of {root} ({source}), so that class would never "
        f"be trained nor scored; to train {name!r}, use an ignore index outside 0..{count - 1} such as "
        f"{255 if count <= 255 else _MAX_IGNORE_INDEX}; to ignore its pixels, {drop}"
    )


def detect_kind(root: str | Path) -> str:
    """Recognise the layout at ``root`` (module docstring); raises DataError listing what was tried."""
    root = Path(root)
    if root.is_file():
        return "list"
    if not root.is_dir():
        raise DataError(f"{root}: dataset path not found")
    voc = _voc_root(root)
    if (voc / "JPEGImages").is_dir() and (voc / "ImageSets" / "Segmentation").is_dir():
        return "voc2012"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    ade = _ade20k_root(root)
    if (ade / "images").is_dir() and (ade / "annotations").is_dir():
        return "ade20k"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    raise DataError(
        f"{root}: dataset layout not recognised; looked for VOC2012 (JPEGImages/ + ImageSets/Segmentation/), "
        f"Cityscapes (leftImg8bit/ + gtFine/), ADE20K (images/ + annotations/), a folder dataset "
        f"(images/ + masks/) or a list file; pass kind= (--kind) to say which"
    )


def open_dataset(
    root: str | Path,
    kind: str = "auto",
    split: str = "train",
    *,
    info: DatasetInfo | None = None,
    transform: Callable[..., Any] | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    data_root: str | Path | None = None,
    preprocess: Preprocess = PYTORCH_PREPROCESS,
    mask_palette: Sequence[Sequence[int]] | str | None = None,
    strict: bool = True,
    ignore_index: int | None = None,
) -> SegmentationDataset:
    """Open a dataset from its on-disk layout (module docstring lists them).

    Args:
        root: dataset folder, or the list file for ``kind="list"``.
        kind: ``"auto"`` (detect), ``"voc2012"``, ``"cityscapes"``, ``"ade20k"``, ``"folder"``, ``"list"``.
        split: ``"train"``, ``"val"`` (``"trainaug"`` for VOC). A list file is its own split:
            for ``list`` it must stay ``"train"`` (open the validation list file instead).
        info: label space; defaults to the dataset's own (VOC2012/CITYSCAPES/ADE20K) for the
            public datasets; for folder/list, ``dataset.json`` or ``classes.txt`` with the data,
            else ``num_classes``.
        transform: paired transform (``train_transforms(...)``) or None.
        seed: augmentation seed base.
        num_classes: class count for folder/list datasets without ``info`` or ``classes.txt``.
        data_root: base of the relative paths in a list file (default: the list file's folder).
        preprocess: normalisation when the transform does not produce tensors.
        mask_palette: accept RGB colour masks, mapping colour ``palette[i]`` to id ``i``; a
            dataset name (``"voc2012"``) uses that dataset's colours (:func:`colour_mask_palette`).
            Not for cityscapes/ade20k, whose masks hold raw values that the layout maps.
        strict: raise on missing pairs / duplicate stems (True) or keep them in
            ``dataset.problems`` and skip those samples (False, used by ``verify-dataset``).
        ignore_index: label value excluded from the loss and the metrics; None keeps the label
            space's (255). Folder/list datasets may choose another (it becomes
            ``dataset.info.ignore_index``); the public layouts map void to 255 and require 255.
            A class id (``0 <= ignore_index < num_classes``) is refused: that class would never
            be trained nor scored.

    Raises:
        DataError: layout not found, list entries missing, no samples.
        InputError: bad kind, split, class count, mask palette or ignore index.
    """
    root = Path(root)
    if kind not in DATASET_KINDS:
        raise InputError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
    if kind == "auto":
        kind = detect_kind(root)
    elif not root.exists():
        what = "list file" if kind == "list" else f"{kind} dataset folder"
        raise DataError(f"{root}: {what} not found")
    if kind == "list" and split != "train":
        raise InputError(
            f"{root}: split {split!r} given for a list dataset, but the list file is the split; "
            f"open the {split} list file itself (pass its path instead of {root.name})"
        )
    palette = _resolve_mask_palette(mask_palette, kind)
    problems = _Problems()
    label_map: LabelMap | None = None
    names_file: Path | None = None
    if kind == "voc2012":
        samples, default_info = _voc_samples(root, split, problems), VOC2012
    elif kind == "cityscapes":
        samples, default_info = _cityscapes_samples(root, split, problems), CITYSCAPES
        label_map = cityscapes_lut()
    elif kind == "ade20k":
        samples, default_info = _ade20k_samples(root, split, problems), ADE20K
        label_map = ade20k_label_map
    elif kind == "folder":
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        samples = _folder_samples(root, split, problems)
        default_info, names_file = _custom_info(root.name or "folder", info, num_classes, root)
    else:
        base = Path(data_root) if data_root is not None else root.parent
        samples = _list_samples(root, base, problems, root_given=data_root is not None)
        # the label-space file beside the list, else in the data root (the authors keep lists apart)
        has_own = _label_space_file(root.parent) is not None
        default_info, names_file = _custom_info(
            root.stem, info, num_classes, root.parent if has_own else base
        )
    if info is None:
        info = default_info
    if num_classes is not None and num_classes != info.num_classes:
        raise InputError(f"num_classes={num_classes} but the {kind} dataset has {info.num_classes} classes")
    if kind in _MAPPED_KINDS and ignore_index is None and info.ignore_index != IGNORE_INDEX:
        ignore_index = info.ignore_index  # an info= with another ignore value: refused just below
    info = _with_ignore_index(info, kind, ignore_index)
    _refuse_ignore_class(info, root, names_file)
    # a list file is its split: naming the internal "train" would only mislead
    where = f"{root} (list)" if kind == "list" else f"{root} ({kind}, split {split!r})"
    if strict:
        problems.raise_if_any(where)
    if not samples and not problems.items:
        what = "in the list file" if kind == "list" else f"for {kind} split {split!r}"
        raise DataError(f"{root}: no samples found {what}")
    return SegmentationDataset(
        samples,
        info,
        label_map=label_map,
        transform=transform,
        seed=seed,
        preprocess=preprocess,
        mask_palette=palette,
        root=root,
        problems=problems.items,
        notes=problems.notes(),
        kind=kind,
        class_names_file=names_file,
    )
