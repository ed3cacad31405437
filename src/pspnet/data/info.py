"""Dataset descriptions as data: class names, palettes, ignore index and evaluation sizes.

Every place that needs a class name, a colour or a crop size reads it from a :class:`DatasetInfo`
so that the numbers live in one table instead of scattered literals. The class names and colours
are the ones the authors ship with hszhao/semseg (``data/<dataset>/*_names.txt`` / ``*_colors.txt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ADE20K",
    "CITYSCAPES",
    "CONTEXT_DEMO",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC2012",
    "DatasetInfo",
    "colour_mask_palette",
    "default_palette",
    "get_dataset_info",
    "has_placeholder_names",
    "placeholder_names",
    "usable_mask_palettes",
]

IGNORE_INDEX = 255
"""Label value that marks pixels excluded from the loss and the metrics (authors' convention)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the label space it was trained for.

    Args:
        name: short identifier (``"voc2012"``).
        class_names: one name per class id, in id order.
        palette: one RGB colour per class id, used for colour masks and overlays.
        ignore_index: label value that is never scored.
        crop_size: training / sliding-window crop (square), as in the authors' configs.
        base_size: long side used at scale 1.0 during multi-scale evaluation.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    crop_size: int = 473
    base_size: int = 512
    context_classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.palette)} palette colours; they must match"
            )
        for name in self.context_classes:
            if name not in self.class_names:
                raise ValueError(f"dataset {self.name!r}: context class {name!r} is not a class name")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls(
            name=str(data["name"]),
            class_names=tuple(str(n) for n in data["class_names"]),
            palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),  # type: ignore[misc]
            ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
            crop_size=int(data.get("crop_size", 473)),
            base_size=int(data.get("base_size", 512)),
            context_classes=tuple(str(n) for n in data.get("context_classes", ())),
        )


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colour map, extended to any number of classes.

    Used when a model or a folder dataset has no palette of its own, so colours stay stable
    across runs and distinct for the first 256 ids.
    """
    colours = []
    for cid in range(num_classes):
        r = g = b = 0
        c = cid
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


_VOC2012_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_VOC2012_PALETTE = (
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 128),
    (64, 0, 0),
    (192, 0, 0),
    (64, 128, 0),
    (192, 128, 0),
    (64, 0, 128),
    (192, 0, 128),
    (64, 128, 128),
    (192, 128, 128),
    (0, 64, 0),
    (128, 64, 0),
    (0, 192, 0),
    (128, 192, 0),
    (0, 64, 128),
)

_CITYSCAPES_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

_CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

_ADE20K_NAMES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

_ADE20K_PALETTE = (
    (120, 120, 120),
    (180, 120, 120),
    (6, 230, 230),
    (80, 50, 50),
    (4, 200, 3),
    (120, 120, 80),
    (140, 140, 140),
    (204, 5, 255),
    (230, 230, 230),
    (4, 250, 7),
    (224, 5, 255),
    (235, 255, 7),
    (150, 5, 61),
    (120, 120, 70),
    (8, 255, 51),
    (255, 6, 82),
    (143, 255, 140),
    (204, 255, 4),
    (255, 51, 7),
    (204, 70, 3),
    (0, 102, 200),
    (61, 230, 250),
    (255, 6, 51),
    (11, 102, 255),
    (255, 7, 71),
    (255, 9, 224),
    (9, 7, 230),
    (220, 220, 220),
    (255, 9, 92),
    (112, 9, 255),
    (8, 255, 214),
    (7, 255, 224),
    (255, 184, 6),
    (10, 255, 71),
    (255, 41, 10),
    (7, 255, 255),
    (224, 255, 8),
    (102, 8, 255),
    (255, 61, 6),
    (255, 194, 7),
    (255, 122, 8),
    (0, 255, 20),
    (255, 8, 41),
    (255, 5, 153),
    (6, 51, 255),
    (235, 12, 255),
    (160, 150, 20),
    (0, 163, 255),
    (140, 140, 140),
    (250, 10, 15),
    (20, 255, 0),
    (31, 255, 0),
    (255, 31, 0),
    (255, 224, 0),
    (153, 255, 0),
    (0, 0, 255),
    (255, 71, 0),
    (0, 235, 255),
    (0, 173, 255),
    (31, 0, 255),
    (11, 200, 200),
    (255, 82, 0),
    (0, 255, 245),
    (0, 61, 255),
    (0, 255, 112),
    (0, 255, 133),
    (255, 0, 0),
    (255, 163, 0),
    (255, 102, 0),
    (194, 255, 0),
    (0, 143, 255),
    (51, 255, 0),
    (0, 82, 255),
    (0, 255, 41),
    (0, 255, 173),
    (10, 0, 255),
    (173, 255, 0),
    (0, 255, 153),
    (255, 92, 0),
    (255, 0, 255),
    (255, 0, 245),
    (255, 0, 102),
    (255, 173, 0),
    (255, 0, 20),
    (255, 184, 184),
    (0, 31, 255),
    (0, 255, 61),
    (0, 71, 255),
    (255, 0, 204),
    (0, 255, 194),
    (0, 255, 82),
    (0, 10, 255),
    (0, 112, 255),
    (51, 0, 255),
    (0, 194, 255),
    (0, 122, 255),
    (0, 255, 163),
    (255, 153, 0),
    (0, 255, 10),
    (255, 112, 0),
    (143, 255, 0),
    (82, 0, 255),
    (163, 255, 0),
    (255, 235, 0),
    (8, 184, 170),
    (133, 0, 255),
    (0, 255, 92),
    (184, 0, 255),
    (255, 0, 31),
    (0, 184, 255),
    (0, 214, 255),
    (255, 0, 112),
    (92, 255, 0),
    (0, 224, 255),
    (112, 224, 255),
    (70, 184, 160),
    (163, 0, 255),
    (153, 0, 255),
    (71, 255, 0),
    (255, 0, 163),
    (255, 204, 0),
    (255, 0, 143),
    (0, 255, 235),
    (133, 255, 0),
    (255, 0, 235),
    (245, 0, 255),
    (255, 0, 122),
    (255, 245, 0),
    (10, 190, 212),
    (214, 255, 0),
    (0, 204, 255),
    (20, 0, 255),
    (255, 255, 0),
    (0, 153, 255),
    (0, 41, 255),
    (0, 255, 204),
    (41, 0, 255),
    (41, 255, 0),
    (173, 0, 255),
    (0, 245, 255),
    (71, 0, 255),
    (122, 0, 255),
    (0, 255, 184),
    (0, 92, 255),
    (184, 255, 0),
    (0, 133, 255),
    (255, 214, 0),
    (25, 194, 194),
    (102, 255, 0),
    (92, 0, 255),
)

VOC2012 = DatasetInfo("voc2012", _VOC2012_NAMES, _VOC2012_PALETTE, crop_size=473, base_size=512)
CITYSCAPES = DatasetInfo("cityscapes", _CITYSCAPES_NAMES, _CITYSCAPES_PALETTE, crop_size=713, base_size=2048)
ADE20K = DatasetInfo("ade20k", _ADE20K_NAMES, _ADE20K_PALETTE, crop_size=473, base_size=512)
CONTEXT_DEMO = DatasetInfo(
    "context_demo",
    ("sky", "water", "road", "boat", "car", "pier", "sidewalk", "pole"),
    (
        (70, 130, 180),  # sky
        (0, 80, 220),  # water
        (128, 64, 128),  # road
        (255, 140, 0),  # boat
        (0, 0, 142),  # car
        (150, 100, 50),  # pier
        (244, 35, 232),  # sidewalk
        (220, 220, 0),  # pole
    ),
    crop_size=192,
    base_size=192,
    # look-alike pairs, listed pairwise: only the scene tells them apart (pspnet.data.synthetic)
    context_classes=("boat", "car", "pier", "sidewalk"),
)
"""Label space of the built-in context benchmark; crop and base size equal the default image size."""

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (VOC2012, CITYSCAPES, ADE20K, CONTEXT_DEMO)}


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset description by name (case-insensitive)."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def colour_mask_palette(name: str) -> tuple[tuple[int, int, int], ...]:
    """The colour of each label value in RGB colour masks of dataset ``name`` (position = value).

    Colour masks are what many tools (and ``Image.convert("RGB")`` on a VOC palette PNG) produce;
    reading them needs the exact colour of every value. For ``voc2012`` this is VOC's full
    256-entry colour map, so the cream void borders (224, 224, 192) read as 255, the ignore label,
    like the palette PNGs VOC ships; for the other datasets it is the class palette.

    Raises:
        ValueError: unknown name ("no such palette", with the usable ones), or a palette that gives
            two ids one colour (ambiguous). Callers prefix the option or key that named it.
    """
    if name.lower() not in DATASETS:
        raise ValueError(f"no such palette; choose one of {', '.join(usable_mask_palettes())}")
    info = get_dataset_info(name)
    palette = default_palette(256) if info.name == "voc2012" else info.palette
    first: dict[tuple[int, int, int], int] = {}
    for cid, colour in enumerate(palette):
        if colour in first:
            raise ValueError(
                f"the {info.name} palette gives ids {first[colour]} and {cid} the same colour {colour}, "
                f"so its colour masks cannot be mapped to ids; save masks as single-channel PNGs of ids"
            )
        first[colour] = cid
    return palette


def usable_mask_palettes() -> list[str]:
    """Dataset names whose palettes can read colour masks. A palette that gives two ids one colour
    (ADE20K's) cannot map colours back to ids, so offering it would only lead to a refusal."""
    usable = []
    for name in sorted(DATASETS):
        try:
            colour_mask_palette(name)
        except ValueError:
            continue
        usable.append(name)
    return usable


def placeholder_names(count: int) -> tuple[str, ...]:
    """``class_0``, ``class_1`` ...: the names of a label space known only by its class count."""
    return tuple(f"class_{i}" for i in range(count))


def has_placeholder_names(names: Sequence[str]) -> bool:
    """Whether ``names`` are :func:`placeholder_names`, which say nothing about the classes (a model
    file or another source may know the real ones)."""
    return tuple(names) == placeholder_names(len(names))
