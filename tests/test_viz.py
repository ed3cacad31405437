"""Colour masks, overlays, label PNGs (values = class ids), atomic image writes, confusion plots."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pspnet import viz
from pspnet.errors import InputError
from pspnet.viz import (
    colorize,
    overlay,
    plot_confusion_matrix,
    save_confidence_png,
    save_image,
    save_label_png,
)

PALETTE = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
LABELS = np.array([[0, 1], [2, 255]], dtype=np.uint8)


def test_colorize_by_hand() -> None:
    expected = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [0, 0, 0]]], dtype=np.uint8)
    out = colorize(LABELS, PALETTE)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_overlay_blends_and_leaves_ignore_pixels() -> None:
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = overlay(image, LABELS, PALETTE, alpha=0.5)
    assert out[0, 0].tolist() == [55, 60, 65]
    assert out[1, 0].tolist() == [85, 90, 95]
    assert out[1, 1].tolist() == [100, 100, 100]
    assert np.array_equal(overlay(image, LABELS, PALETTE, alpha=0.0), image)
    assert overlay(image, LABELS, PALETTE, alpha=1.0)[0, 1].tolist() == [40, 50, 60]
    with pytest.raises(InputError, match="alpha"):
        overlay(image, LABELS, PALETTE, alpha=1.5)


def test_label_png_pixel_values_are_class_ids_with_a_palette(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 3, (13, 17)).astype(np.uint8)
    path = save_label_png(tmp_path / "a.png", labels, PALETTE)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im), labels)
        assert im.getpalette()[:9] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), colorize(labels, PALETTE)[..., ::-1])


def test_label_png_above_256_classes_is_16_bit(tmp_path: Path) -> None:
    labels = np.array([[0, 255], [256, 299]], dtype=np.int32)
    path = save_label_png(tmp_path / "wide.png", labels, [(0, 0, 0)] * 300)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)


def test_label_png_rejects_out_of_range_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="65535"):
        save_label_png(tmp_path / "x.png", np.array([[-1]]), PALETTE)
    assert list(tmp_path.iterdir()) == []


def test_save_image_keeps_rgb_order(tmp_path: Path) -> None:
    rgb = np.zeros((5, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    save_image(tmp_path / "r.png", rgb)
    with Image.open(tmp_path / "r.png") as im:
        assert np.array_equal(np.array(im.convert("RGB")), rgb)
    save_image(tmp_path / "r.jpg", rgb)
    with Image.open(tmp_path / "r.jpg") as im:
        assert im.format == "JPEG" and np.abs(np.array(im).astype(int) - rgb).max() < 8
    with pytest.raises(InputError, match="suffix"):
        save_image(tmp_path / "r.nope", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jpg", "r.png"]


def test_confidence_png_scales_to_255(tmp_path: Path) -> None:
    conf = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    save_confidence_png(tmp_path / "c.png", conf)
    back = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    assert back.tolist() == [[0, 128], [255, 64]]


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(viz.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_label_png(tmp_path / "a.png", LABELS, PALETTE)
    assert list(tmp_path.iterdir()) == []


def test_confusion_plot_writes_a_png(tmp_path: Path) -> None:
    conf = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    path = plot_confusion_matrix(conf, ["a", "b", "c"], tmp_path / "cm.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
    with pytest.raises(InputError, match="class names"):
        plot_confusion_matrix(conf, ["a", "b"], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


def test_confusion_plot_handles_many_classes(tmp_path: Path) -> None:
    conf = np.random.default_rng(0).integers(0, 5, (150, 150))
    path = plot_confusion_matrix(conf, [f"c{i}" for i in range(150)], tmp_path / "big.png")
    assert path.stat().st_size > 0
