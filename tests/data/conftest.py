"""Tiny fake dataset trees in the real on-disk layouts (VOC, Cityscapes, ADE20K, folder, list).

Masks are built from 2x2 quadrants of known raw label values, so tests can check the mapped
train ids exactly: quadrant (top-left, top-right, bottom-left, bottom-right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.data.info import VOC2012

H, W = 40, 48


def quadrants(values: tuple[int, int, int, int], h: int = H, w: int = W, dtype=np.uint8) -> np.ndarray:
    """A mask whose four quadrants hold ``values`` (TL, TR, BL, BR)."""
    mask = np.empty((h, w), dtype=dtype)
    mask[: h // 2, : w // 2], mask[: h // 2, w // 2 :] = values[0], values[1]
    mask[h // 2 :, : w // 2], mask[h // 2 :, w // 2 :] = values[2], values[3]
    return mask


def random_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb(path: Path, image: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **save_kwargs)
    return path


def write_mask(path: Path, mask: np.ndarray, palette: bool = False) -> Path:
    """Single-channel PNG (``L``), or a palette (``P``) PNG with the VOC colours like VOC ships."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        flat = [c for colour in VOC2012.palette for c in colour]
        im.putpalette(flat + [224, 224, 192] * (256 - len(VOC2012.palette)))
        im.save(path)
    else:
        Image.fromarray(mask).save(path)
    return path


class Trees:
    """Builders for the fake layouts in one tmp folder (helpers are methods: no conftest imports)."""

    quadrants = staticmethod(quadrants)
    random_image = staticmethod(random_image)
    write_rgb = staticmethod(write_rgb)
    write_mask = staticmethod(write_mask)

    def __init__(self, base: Path) -> None:
        self.base = base

    def voc(self) -> Path:
        """VOCdevkit/VOC2012: train = a, b; val = c; trainaug (SBD masks) = a, b, c."""
        root = self.base / "VOCdevkit" / "VOC2012"
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        values = {"2007_000001": (0, 15, 255, 1), "2007_000002": (20, 0, 0, 7), "2008_000003": (0, 5, 0, 255)}
        for i, (name, vals) in enumerate(values.items()):
            write_rgb(root / "JPEGImages" / f"{name}.jpg", random_image(i), quality=95)
            write_mask(root / "SegmentationClass" / f"{name}.png", quadrants(vals), palette=True)
            aug = tuple(v if v == 255 else (v + 1) % 21 for v in vals)  # differs from SegmentationClass
            write_mask(root / "SegmentationClassAug" / f"{name}.png", quadrants(aug))
        (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
        (sets / "val.txt").write_text("2008_000003\n")
        (sets / "trainaug.txt").write_text(
            "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in values)
        )
        return root

    def cityscapes(self) -> Path:
        root = self.base / "cityscapes"
        layout = {
            ("train", "aachen", "aachen_000000_000019"): (7, 26, 0, 33),
            ("train", "bremen", "bremen_000001_000019"): (8, 11, 24, 6),
            ("val", "lindau", "lindau_000000_000019"): (7, 7, 7, 7),
        }
        for i, ((split, city, name), vals) in enumerate(layout.items()):
            write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", random_image(i))
            write_mask(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", quadrants(vals))
        return root

    def ade20k(self) -> Path:
        root = self.base / "ADEChallengeData2016"
        layout = {
            ("training", "ADE_train_00000001"): (0, 1, 150, 2),
            ("training", "ADE_train_00000002"): (3, 3, 0, 0),
            ("validation", "ADE_val_00000001"): (1, 1, 1, 1),
        }
        for i, ((split, name), vals) in enumerate(layout.items()):
            write_rgb(root / "images" / split / f"{name}.jpg", random_image(i), quality=95)
            write_mask(root / "annotations" / split / f"{name}.png", quadrants(vals))
        return root

    def folder(self, name: str = "folder", masks: dict[str, np.ndarray] | None = None) -> Path:
        """root/images/*.png + root/masks/*.png; default 3 pairs with classes 0..2 and 255."""
        root = self.base / name
        if masks is None:
            masks = {
                "a": quadrants((0, 1, 2, 255)),
                "b": quadrants((2, 2, 1, 0)),
                "c": quadrants((1, 1, 1, 1)),
            }
        for i, (stem, mask) in enumerate(masks.items()):
            write_rgb(root / "images" / f"{stem}.png", random_image(i, *mask.shape))
            write_mask(root / "masks" / f"{stem}.png", mask)
        return root


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    return Trees(tmp_path)
