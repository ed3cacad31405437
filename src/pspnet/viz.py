"""Colour masks, overlays, label PNGs and confusion-matrix plots.

Every writer goes through :func:`pspnet.io.checkpoint.atomic_write` (temporary file + rename), so an
interrupted run never leaves a half-written image that a later step would mistake for a result.

Label PNGs store class ids as pixel values: up to 256 classes as a palette ("P" mode) PNG, which
viewers show in colour while ``PIL.Image.open(path)`` returns the ids; more than 256 classes as a
16-bit greyscale PNG (ids up to 65535; no colours, as PNG palettes hold at most 256 entries).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pspnet.errors import InputError
from pspnet.io.checkpoint import atomic_write

__all__ = [
    "colorize",
    "overlay",
    "plot_confusion_matrix",
    "save_confidence_png",
    "save_image",
    "save_label_png",
]

PathLike = str | os.PathLike[str]


def _palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.asarray(palette, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise InputError(f"palette must be a non-empty list of RGB triples, got shape {table.shape}")
    if table.min() < 0 or table.max() > 255:
        raise InputError("palette colours must be in 0-255")
    return table.astype(np.uint8)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a 2-D integer array, got {labels.dtype} shape {labels.shape}")
    return labels


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Class ids ``(H, W)`` -> RGB ``uint8`` ``(H, W, 3)``; ids outside the palette (255) are black."""
    labels = _check_labels(labels)
    table = _palette_array(palette)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    known = (labels >= 0) & (labels < len(table))
    out[known] = table[labels[known]]
    return out


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend the colour mask over an RGB image: ``(1 - alpha) * image + alpha * colour``.

    Pixels whose id is outside the palette (ignore) keep the image unchanged.
    """
    labels = _check_labels(labels)
    if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image {image.shape} and labels {labels.shape} must be (H, W, 3) and (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    colour = colorize(labels, palette).astype(np.float32)
    base = image.astype(np.float32)
    blended = (1.0 - alpha) * base + alpha * colour
    known = ((labels >= 0) & (labels < len(palette)))[..., None]
    return np.clip(np.where(known, blended, base) + 0.5, 0, 255).astype(np.uint8)


def save_label_png(
    path: PathLike, labels: np.ndarray, palette: Sequence[Sequence[int]] | None = None
) -> Path:
    """Write class ids as a PNG whose pixel values are the ids (see the module docstring).

    ``palette`` (RGB per class) colours the palette PNG; it is ignored for the 16-bit variant,
    chosen when the palette has more than 256 entries or an id exceeds 255.
    """
    labels = _check_labels(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError(f"label ids must be in [0, 65535] for a PNG, got [{labels.min()}, {labels.max()}]")
    wide = (palette is not None and len(palette) > 256) or (labels.size > 0 and int(labels.max()) > 255)
    if wide:
        image = Image.fromarray(labels.astype(np.uint16))
    else:
        # putpalette turns this "L" image into "P" keeping the values; convert("P") would requantise.
        image = Image.fromarray(labels.astype(np.uint8))
        flat = np.zeros((256, 3), dtype=np.uint8)
        if palette is not None:
            table = _palette_array(palette)
            flat[: len(table)] = table
        image.putpalette(flat.reshape(-1).tolist())
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_image(path: PathLike, rgb: np.ndarray, *, quality: int = 95) -> Path:
    """Write an RGB (or greyscale) ``uint8`` image; the format follows the suffix (.png, .jpg ...)."""
    path = Path(path)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise InputError(f"save_image needs a uint8 (H, W) or (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    suffix = path.suffix.lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    try:
        ok, encoded = cv2.imencode(suffix, pixels, params)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"{path}: cannot encode an image with suffix {suffix!r}; use .png or .jpg")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))


def save_confidence_png(path: PathLike, confidence: np.ndarray) -> Path:
    """Write a ``(H, W)`` confidence map in [0, 1] as an 8-bit greyscale PNG (255 = certain)."""
    scaled = np.clip(np.asarray(confidence, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return save_image(path, scaled)


def plot_confusion_matrix(
    conf: np.ndarray, class_names: Sequence[str], path: PathLike, *, title: str = "confusion matrix"
) -> Path:
    """Row-normalised confusion matrix (rows = ground truth) as an image, via matplotlib's Agg backend.

    Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it changes no global backend state
    and works on headless machines. Class names label the axes up to 60 classes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = np.asarray(conf, dtype=np.float64)
    num = conf.shape[0]
    if conf.shape != (num, num) or len(class_names) != num:
        raise InputError(f"confusion matrix {conf.shape} does not match {len(class_names)} class names")
    rows = conf.sum(axis=1, keepdims=True)
    normalised = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    side = min(4.0 + 0.2 * num, 16.0)
    figure = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    shown = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    if num <= 60:
        axes.set_xticks(range(num))
        axes.set_yticks(range(num))
        axes.set_xticklabels(class_names, rotation=90, fontsize=7)
        axes.set_yticklabels(class_names, fontsize=7)
        if num <= 20:
            for i in range(num):
                for j in range(num):
                    if normalised[i, j] >= 0.005:
                        colour = "white" if normalised[i, j] > 0.5 else "black"
                        axes.text(
                            j,
                            i,
                            f"{normalised[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color=colour,
                        )
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
