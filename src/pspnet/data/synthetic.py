"""The built-in context benchmark: synthetic street/harbour scenes where only global context decides.

Why this dataset exists: PSPNet's claim is that a global prior (the pyramid pooling module) fixes
mistakes a dilated FCN makes when local appearance is ambiguous ("a boat on a river is not a car").
Real datasets need hours of GPU time to show that, so ``pspnet demo`` trains on these scenes instead.

What makes global context necessary here (measured with ``pspnet demo`` over seeds 0-2, README):

* **Context pairs with identical appearance.** ``boat`` / ``car`` are the same hull shapes (dark
  outline, cabin with windows) drawn by the same code from the same colour and size distributions;
  ``pier`` / ``sidewalk`` are the same tiled band along one image edge. Nothing local tells them apart.
* **The scene is a global statistic.** Every image has a ``water`` and/or a ``road`` ground. In most
  images (80 %) a large smooth region of the *other* ground covers roughly 20-40 % of the image (a canal
  through a street, a quay road in a harbour). The scene is whichever ground covers more pixels: hulls
  are ``boat`` and the band is ``pier`` in a water scene, ``car`` and ``sidewalk`` in a road scene.
  Half of the hulls are placed on the minority ground, so an object's own surroundings often
  contradict the scene and only an image-wide summary (the 1x1 / 2x2 pyramid bins) decides.
  A plain "is there water nearby" cue, which a dilated FCN's receptive field answers easily at this
  size, is not enough: a prototype with one ground type per image showed no gap at all.
* **Stuff and a small class.** ``sky``, ``water`` and ``road`` are easy and locally decidable: they
  should score the same for both models. ``pole`` is a lamp post 7-10 px wide at 192 px (poles 2-3 px
  wide scored 0 IoU for both models at the demo budget, so they are thicker here to be learnable
  through an output stride of 8).

Labels are exact by construction (no annotation noise), so a model can in principle reach 100 % mIoU;
every remaining error is a modelling error. Training crops must cover the whole image (crop size =
image size): the label rule is image-global, and a crop may change which ground is the majority.

Everything is deterministic: image ``i`` of split ``s`` is drawn from
``np.random.default_rng([seed, s, i])``, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pspnet.data.info import CONTEXT_DEMO
from pspnet.errors import InputError

__all__ = [
    "BOAT",
    "CAR",
    "CLASS_NAMES",
    "CONTEXT_DEMO",
    "GENERATOR_VERSION",
    "PIER",
    "POLE",
    "ROAD",
    "SIDEWALK",
    "SKY",
    "WATER",
    "Hull",
    "Pole",
    "SceneLayout",
    "ensure_demo_data",
    "generate_scene",
    "make_demo_data",
    "read_demo_metadata",
    "render_layout",
    "sample_layout",
    "scene_ground",
    "swap_grounds",
]

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would draw different images, so stale caches are regenerated."""

SKY, WATER, ROAD, BOAT, CAR, PIER, SIDEWALK, POLE = range(8)
CLASS_NAMES = CONTEXT_DEMO.class_names

# Placeholder ids while drawing: resolved to boat/car and pier/sidewalk once the scene is known.
_HULL, _BAND = 250, 251
_SPLITS = ("train", "val")
_METADATA = "dataset.json"
_FORMAT = "pspnet-context-demo"
_TMP_PREFIX = ".pspnet-demo-"  # temporary folders of an unfinished generation (ignored when checking)


# --- layout: every random choice of one image, before any pixel is drawn --------------------


@dataclass(frozen=True, eq=False)
class Hull:
    """One boat-or-car: the same shape whatever its label (the label depends on the scene only)."""

    body: np.ndarray  # (K, 2) int32 polygon
    cabin: np.ndarray  # (4, 2) int32 polygon
    windows: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1) rectangles, drawn dark
    colour: tuple[int, int, int]
    cabin_colour: tuple[int, int, int]
    outline: int  # outline thickness in pixels


@dataclass(frozen=True, eq=False)
class Pole:
    """A lamp post: a vertical bar with a wider head, in front of everything else."""

    x0: int
    x1: int
    top: int
    bottom: int
    head: tuple[int, int, int, int]
    colour: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class SceneLayout:
    """Geometry, colours and texture seeds of one image: ``render_layout`` turns it into pixels.

    Keeping the layout separate from the rendering is what lets a test swap the two grounds
    (:func:`swap_grounds`) and check that only the ground pixels and the context labels change: the
    objects are drawn from the layout alone, never from the scene type.
    """

    size: int
    horizon: int  # rows [0, horizon) are sky
    main_ground: int  # WATER or ROAD: the kind of the (larger) main ground region
    other: np.ndarray  # bool (H, W): the secondary region of the other ground kind (may be empty)
    band: np.ndarray  # bool (H, W): the tiled band (pier or sidewalk; may be empty)
    hulls: tuple[Hull, ...]
    poles: tuple[Pole, ...]
    texture_seeds: tuple[int, int, int, int, int]  # sky, water, road, band, noise
    gain: float
    bias: float


def _jitter(rng: np.random.Generator, base: Sequence[int], spread: int) -> tuple[int, int, int]:
    values = np.clip(np.asarray(base) + rng.integers(-spread, spread + 1, 3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


_HULL_COLOURS = (
    (200, 40, 40),
    (235, 235, 230),
    (240, 200, 40),
    (40, 140, 70),
    (150, 60, 160),
    (230, 120, 30),
)


def _sample_hull(rng: np.random.Generator, cx: float, cy: float, length: float, height: float) -> Hull:
    size_unit = max(1, round(length / 14))
    top = cy - height / 2
    cabin_h = height * rng.uniform(0.35, 0.5)
    deck = top + cabin_h
    bottom = top + height
    xl, xr = cx - length / 2, cx + length / 2
    taper_l, taper_r = rng.uniform(0.04, 0.3, 2) * length
    bow = rng.uniform(0.0, 0.15) * length
    body = [(xl, deck), (xr + bow, deck - 0.15 * cabin_h), (xr - taper_r, bottom), (xl + taper_l, bottom)]
    cabin_w = length * rng.uniform(0.3, 0.55)
    ccx = cx + rng.uniform(-0.2, 0.2) * length
    c0, c1 = ccx - cabin_w / 2, ccx + cabin_w / 2
    cabin = [(c0, top), (c1, top), (c1, deck + 1), (c0, deck + 1)]
    if rng.random() < 0.5:  # mirror: bow on the left
        body = [(2 * cx - x, y) for x, y in body]
        cabin = [(2 * cx - x, y) for x, y in cabin]
        c0, c1 = 2 * cx - c1, 2 * cx - c0
    n_win = int(rng.integers(1, 4))
    win_h = max(1.0, cabin_h * 0.4)
    seg = (c1 - c0) / (2 * n_win + 1)
    wy0 = top + cabin_h * 0.25
    windows = tuple(
        (round(c0 + (2 * k + 1) * seg), round(wy0), round(c0 + (2 * k + 2) * seg) - 1, round(wy0 + win_h))
        for k in range(n_win)
    )
    colour = _jitter(rng, _HULL_COLOURS[int(rng.integers(len(_HULL_COLOURS)))], 25)
    cabin_colour = _jitter(rng, (215, 215, 210), 30)
    return Hull(
        body=np.round(np.asarray(body)).astype(np.int32),
        cabin=np.round(np.asarray(cabin)).astype(np.int32),
        windows=windows,
        colour=colour,
        cabin_colour=cabin_colour,
        outline=max(1, min(2, size_unit)),
    )


def _smooth_region(rng: np.random.Generator, free: np.ndarray, fraction: float) -> np.ndarray:
    """A large smooth region covering ``fraction`` of the ``free`` pixels (thresholded low-freq noise)."""
    size = free.shape[0]
    grid = int(rng.integers(2, 5))
    field = cv2.resize(
        rng.standard_normal((grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    # A random tilt turns some regions into bands (a canal, a quay road) rather than blobs.
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0, 1.5)
    field += tilt * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    values = field[free]
    if values.size == 0:
        return np.zeros_like(free)
    threshold = np.quantile(values, 1.0 - fraction)
    return free & (field > threshold)


def sample_layout(rng: np.random.Generator, size: int = 192) -> SceneLayout:
    """Draw every random choice of one scene (see the module docstring for the design)."""
    if size < 32:
        raise InputError(f"synthetic scene size must be >= 32 px, got {size}")
    s = float(size)
    horizon = round(s * rng.uniform(0.12, 0.28))
    main_ground = WATER if rng.random() < 0.5 else ROAD
    ground = np.zeros((size, size), dtype=bool)
    ground[horizon:] = True

    band = np.zeros((size, size), dtype=bool)
    if rng.random() < 0.75:
        thickness = max(3, round(s * rng.uniform(0.08, 0.14)))
        side = rng.choice(3, p=(0.5, 0.25, 0.25))
        if side == 0:
            band[size - thickness :] = True
        elif side == 1:
            band[horizon:, :thickness] = True
        else:
            band[horizon:, size - thickness :] = True
    free = ground & ~band

    other = np.zeros_like(free)
    if rng.random() < 0.8:
        other = _smooth_region(rng, free, rng.uniform(0.32, 0.46))
    main = free & ~other

    # Hulls: half on the minority ground, so local surroundings often contradict the scene.
    regions = [np.flatnonzero(main), np.flatnonzero(other)]
    hulls: list[Hull] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(2, 6))):
        length = s * rng.uniform(0.13, 0.24)
        height = length * rng.uniform(0.4, 0.55)
        pick = 1 if regions[1].size and rng.random() < 0.5 else 0
        for _attempt in range(6):
            flat = regions[pick][int(rng.integers(regions[pick].size))]
            cy, cx = divmod(int(flat), size)
            cy = float(np.clip(cy, horizon + height / 2 + 1, s - height / 2))
            cx = float(np.clip(cx, length / 2, s - length / 2))
            box = (cx - length / 2, cy - height / 2, cx + length / 2, cy + height / 2)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes):
                break
        boxes.append(box)
        hulls.append(_sample_hull(rng, cx, cy, length, height))

    poles: list[Pole] = []
    if rng.random() < 0.75:
        for _ in range(int(rng.integers(1, 4))):
            width = max(2, round(s * rng.uniform(0.036, 0.052)))
            x0 = int(rng.integers(0, size - width))
            bottom = int(rng.integers(min(horizon + size // 8, size - 1), size))
            top = max(0, bottom - round(s * rng.uniform(0.2, 0.4)))
            head_w = round(width * rng.uniform(1.8, 2.6))
            hx0 = x0 + width // 2 - head_w // 2
            head = (hx0, top, hx0 + head_w, top + max(2, round(width * rng.uniform(0.8, 1.2))))
            grey = int(rng.integers(35, 80))
            poles.append(Pole(x0, x0 + width - 1, top, bottom, head, (grey, grey, grey + 8)))

    seeds = rng.integers(0, 2**31 - 1, 5)
    return SceneLayout(
        size=size,
        horizon=horizon,
        main_ground=main_ground,
        other=other,
        band=band,
        hulls=tuple(hulls),
        poles=tuple(poles),
        texture_seeds=(int(seeds[0]), int(seeds[1]), int(seeds[2]), int(seeds[3]), int(seeds[4])),
        gain=float(rng.uniform(0.85, 1.15)),
        bias=float(rng.uniform(-12, 12)),
    )


def swap_grounds(layout: SceneLayout) -> SceneLayout:
    """The same layout with water and road exchanged: objects unchanged, so their labels must swap."""
    return replace(layout, main_ground=ROAD if layout.main_ground == WATER else WATER)


# --- rendering ---------------------------------------------------------------------------------


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (cheaper than Gaussian; blurred or tiny anyway)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(3.4641)


def _sky(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.asarray(_jitter(rng, (90, 140, 210), 20), dtype=np.float32)
    low = np.asarray(_jitter(rng, (185, 210, 235), 15), dtype=np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    clouds = cv2.resize(
        rng.standard_normal((4, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    return top + (low - top) * t + 10.0 * clouds[..., None]


def _water(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(_jitter(rng, (35, 95, 160), 18), dtype=np.float32)
    swell = cv2.resize(
        rng.standard_normal((size // 4, size // 16)).astype(np.float32),
        (size, size),
        interpolation=cv2.INTER_LINEAR,
    )
    ripples = cv2.blur(_unit_noise(rng, (size, size)), (9, 1))
    shade = 12.0 * swell + 14.0 * ripples
    return base + shade[..., None] * np.asarray((0.6, 0.8, 1.0), dtype=np.float32)


def _road(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = float(rng.integers(95, 130))
    base = np.asarray((grey, grey, grey + 4), dtype=np.float32) + rng.integers(-6, 7, 3).astype(np.float32)
    patches = cv2.resize(
        rng.standard_normal((6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    grain = _unit_noise(rng, (size, size))
    return base + (7.0 * patches + 9.0 * grain)[..., None]


def _tiles(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(_jitter(rng, (170, 150, 120), 20), dtype=np.float32)
    tile = max(3, round(size * rng.uniform(0.035, 0.055)))
    ox, oy = rng.integers(0, tile, 2)
    coords = np.arange(size)
    ty, tx = (coords + oy) // tile, (coords + ox) // tile
    per_tile = rng.uniform(-14, 14, (int(ty[-1]) + 1, int(tx[-1]) + 1)).astype(np.float32)
    shade = per_tile[ty[:, None], tx[None, :]]
    shade[(coords + oy) % tile == 0, :] = -45.0  # joints between tiles
    shade[:, (coords + ox) % tile == 0] = -45.0
    return base + shade[..., None]


def _draw_hull(image: np.ndarray, mask: np.ndarray, hull: Hull) -> None:
    dark = (25, 25, 28)
    cv2.fillPoly(image, [hull.body], hull.colour)
    cv2.fillPoly(image, [hull.cabin], hull.cabin_colour)
    for x0, y0, x1, y1 in hull.windows:
        cv2.rectangle(image, (x0, y0), (x1, y1), (40, 50, 70), thickness=-1)
    cv2.polylines(image, [hull.body, hull.cabin], True, dark, thickness=hull.outline, lineType=cv2.LINE_8)
    cv2.fillPoly(mask, [hull.body, hull.cabin], _HULL)
    cv2.polylines(mask, [hull.body, hull.cabin], True, _HULL, thickness=hull.outline, lineType=cv2.LINE_8)


def _draw_pole(image: np.ndarray, mask: np.ndarray, pole: Pole) -> None:
    light = tuple(min(255, c + 45) for c in pole.colour)
    cv2.rectangle(image, (pole.x0, pole.top), (pole.x1, pole.bottom), pole.colour, thickness=-1)
    cv2.rectangle(image, pole.head[:2], pole.head[2:], light, thickness=-1)
    cv2.rectangle(mask, (pole.x0, pole.top), (pole.x1, pole.bottom), POLE, thickness=-1)
    cv2.rectangle(mask, pole.head[:2], pole.head[2:], POLE, thickness=-1)


def scene_ground(mask: np.ndarray) -> int:
    """The scene rule: ``WATER`` if water covers more pixels than road, else ``ROAD`` (ties: water)."""
    return WATER if int(np.count_nonzero(mask == WATER)) >= int(np.count_nonzero(mask == ROAD)) else ROAD


def render_layout(layout: SceneLayout) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and labels of a layout: ``(image RGB uint8 (H, W, 3), mask uint8 (H, W))``."""
    size = layout.size
    sky_seed, water_seed, road_seed, band_seed, noise_seed = layout.texture_seeds
    other_kind = ROAD if layout.main_ground == WATER else WATER
    kinds = np.full((size, size), layout.main_ground, dtype=np.uint8)
    kinds[layout.other] = other_kind
    kinds[: layout.horizon] = SKY
    kinds[layout.band] = _BAND

    textures = {SKY: _sky, WATER: _water, ROAD: _road, _BAND: _tiles}
    seeds = {SKY: sky_seed, WATER: water_seed, ROAD: road_seed, _BAND: band_seed}
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    for kind, texture in textures.items():
        where = kinds == kind
        if where.any():
            cv2.copyTo(texture(seeds[kind], size), where.view(np.uint8), canvas)
    image = np.clip(canvas, 0, 255, out=canvas).astype(np.uint8)
    mask = kinds.copy()
    for hull in layout.hulls:
        _draw_hull(image, mask, hull)
    for pole in layout.poles:
        _draw_pole(image, mask, pole)

    # Sensor noise in {-3, -1, 1, 3}: random bytes are 15x cheaper than Gaussian draws, and 2 bits of
    # entropy per channel keep the PNGs small and fast to encode.
    noise_bytes = np.frombuffer(np.random.default_rng(noise_seed).bytes(size * size * 3), dtype=np.uint8)
    noise = (noise_bytes >> 6).astype(np.float32).reshape(size, size, 3)
    final = cv2.addWeighted(image.astype(np.float32), layout.gain, noise, 2.0, layout.bias + 0.5 - 3.0)
    image = np.clip(final, 0, 255, out=final).astype(np.uint8)

    water_scene = scene_ground(mask) == WATER
    mask[mask == _HULL] = BOAT if water_scene else CAR
    mask[mask == _BAND] = PIER if water_scene else SIDEWALK
    return image, mask


def generate_scene(rng: np.random.Generator, size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image RGB uint8 (size, size, 3), mask uint8 (size, size) with ids of CLASS_NAMES)``."""
    return render_layout(sample_layout(rng, size))


# --- dataset on disk ---------------------------------------------------------------------------


def _request(seed: int, num_train: int, num_val: int, size: int) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": int(size),
    }


def _write_range(args: tuple[Path, int, int, int, int, int]) -> int:
    """Worker: draw and write images ``start..stop`` of one split (module level so it pickles)."""
    root, seed, split_id, start, stop, size = args
    cv2.setNumThreads(1)
    split = _SPLITS[split_id]
    # Fast PNG settings: the SUB filter at level 1 encodes 1.5x faster than the default heuristics.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    for index in range(start, stop):
        image, mask = generate_scene(np.random.default_rng([seed, split_id, index]), size)
        name = f"{index:05d}.png"
        if not cv2.imwrite(str(root / "images" / split / name), image[:, :, ::-1], params):
            raise OSError(f"could not write {root / 'images' / split / name}")
        if not cv2.imwrite(str(root / "masks" / split / name), mask, params):
            raise OSError(f"could not write {root / 'masks' / split / name}")
    return stop - start


def _default_workers() -> int:
    return max(
        1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


def make_demo_data(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_val: int = 200,
    size: int = 192,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the context benchmark under ``root`` and return ``root``.

    ``root`` must be absent, an empty folder, or a benchmark generated earlier (its
    ``dataset.json`` says so), which is replaced; anything else is refused before any work, so a
    mistyped path never deletes the user's files.

    Layout (the generic folder format): ``images/{train,val}/NNNNN.png`` (RGB),
    ``masks/{train,val}/NNNNN.png`` (single-channel label ids), and ``dataset.json`` with the
    :class:`DatasetInfo` fields at top level plus the generation request (seed, sizes, generator
    version) so that :func:`ensure_demo_data` can tell whether a cache still matches.

    Generation happens in a temporary folder moved into place only when complete, and
    ``dataset.json`` is moved last, so an interrupted run never leaves a dataset that looks valid.

    Args:
        root: output folder: absent, empty, or an earlier generated benchmark (replaced).
        seed: base seed; image ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
        num_train: training images (>= 1).
        num_val: validation images (>= 1).
        size: square image side in pixels (>= 32).
        workers: processes; ``None`` uses up to 4 of the available cores, 0 or 1 runs inline.
        progress: show a tqdm progress bar.

    Raises:
        InputError: bad counts or size; ``root`` is a file, or a folder holding anything but a
            generated benchmark.
    """
    _check_replaceable(Path(root))
    return _generate(
        Path(root),
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        size=size,
        workers=workers,
        progress=progress,
    )


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything but an empty folder or a benchmark generated earlier."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(f"{root} is a file, not a folder; choose another output folder for the demo data")
    metadata = read_demo_metadata(root)
    if metadata is not None and metadata.get("format") == _FORMAT:
        return
    if any(not entry.name.startswith(_TMP_PREFIX) for entry in root.iterdir()):
        raise InputError(
            f"{root} exists and is not a generated demo dataset (no {_METADATA} from make-demo-data); "
            "remove it or choose another (new or empty) folder"
        )


def _generate(
    root: Path, *, seed: int, num_train: int, num_val: int, size: int, workers: int | None, progress: bool
) -> Path:
    if num_train < 1 or num_val < 1:
        raise InputError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if size < 32:
        raise InputError(f"size must be >= 32 px, got {size}")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file, not a folder; remove it or choose another folder")
    in_place = root.is_dir()
    if not in_place:
        root.parent.mkdir(parents=True, exist_ok=True)
    # Inside an existing root the temporary folder sits on the same file system and in a folder we
    # may write to; the root itself is never renamed (it may be the working directory, ".").
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=root if in_place else root.parent))
    try:
        for kind in ("images", "masks"):
            for split in _SPLITS:
                (tmp / kind / split).mkdir(parents=True)
        chunk = 50
        jobs = [
            (tmp, seed, split_id, start, min(start + chunk, count), size)
            for split_id, count in enumerate((num_train, num_val))
            for start in range(0, count, chunk)
        ]
        workers = _default_workers() if workers is None else workers
        bar = tqdm(total=num_train + num_val, desc="demo data", unit="img", disable=not progress)
        with bar:
            if workers <= 1 or len(jobs) == 1:
                for job in jobs:
                    bar.update(_write_range(job))
            else:
                import multiprocessing

                # spawn: the parent may hold OpenMP threads (torch), which fork would copy broken.
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    for done in pool.map(_write_range, jobs):
                        bar.update(done)
        metadata = {**CONTEXT_DEMO.to_dict(), **_request(seed, num_train, num_val, size)}
        metadata["crop_size"] = metadata["base_size"] = int(size)
        (tmp / _METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if in_place:
            _move_into(tmp, root)
        else:
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into(tmp: Path, root: Path) -> None:
    """Swap the generated entries into ``root``; other entries there are left alone.

    The old ``dataset.json`` goes first and the new one comes last, so a folder caught half-way
    never passes for a complete benchmark (:func:`ensure_demo_data` then regenerates it).
    """
    old = tmp / "old"
    old.mkdir()
    (root / _METADATA).unlink(missing_ok=True)
    for name in ("images", "masks"):
        if (root / name).exists() or (root / name).is_symlink():
            os.replace(root / name, old / name)
        os.replace(tmp / name, root / name)
    os.replace(tmp / _METADATA, root / _METADATA)


def read_demo_metadata(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``dataset.json`` of a generated benchmark, or ``None`` if absent or unreadable."""
    path = Path(root) / _METADATA
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cache_matches(root: Path, request: dict[str, Any]) -> bool:
    data = read_demo_metadata(root)
    if data is None or any(data.get(key) != value for key, value in request.items()):
        return False
    # A cheap completeness check: every file the request implies must exist.
    for split, count in zip(_SPLITS, (request["num_train"], request["num_val"]), strict=True):
        for kind in ("images", "masks"):
            folder = root / kind / split
            if not folder.is_dir() or len(os.listdir(folder)) != count:
                return False
    return True


def ensure_demo_data(
    cache_dir: str | os.PathLike[str],
    seed: int = 0,
    *,
    num_train: int = 2000,
    num_val: int = 200,
    size: int = 192,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """A generated benchmark under ``cache_dir`` matching the request, reused if valid, else (re)made.

    The cache lives in ``cache_dir / f"context_demo-v{version}-s{seed}-{size}px-{num_train}-{num_val}"``
    so different requests never overwrite each other; a folder whose ``dataset.json`` disagrees with
    the request (or that misses files) is regenerated.
    """
    request = _request(seed, num_train, num_val, size)
    root = Path(cache_dir) / f"context_demo-v{GENERATOR_VERSION}-s{seed}-{size}px-{num_train}-{num_val}"
    if _cache_matches(root, request):
        return root
    # The folder is ours (its name encodes the request): a partial or stale one is regenerated.
    return _generate(
        root, seed=seed, num_train=num_train, num_val=num_val, size=size, workers=workers, progress=progress
    )
