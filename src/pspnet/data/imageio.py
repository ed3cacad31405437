"""Reading images and label masks the same way everywhere, with errors that name the file.

Images go through OpenCV (fast JPEG/PNG decoding, non-ASCII paths via ``np.fromfile``) and come
back as RGB ``uint8``; masks go through Pillow because palette PNGs (PASCAL VOC) must be read as
palette *indices*, which OpenCV would expand to colours. Both check the header size before
decoding, so a 100k x 100k file fails fast instead of exhausting memory in a DataLoader worker.

The EXIF orientation is applied exactly once, here, after OpenCV has decoded the stored pixels:
``IMREAD_UNCHANGED`` ignores the tag of JPEG, PNG and WEBP files, but OpenCV's TIFF decoder applies
a TIFF's orientation tag itself in some versions (5.0 does, even with ``IMREAD_UNCHANGED``), so a
TIFF's tag is set to 1 in the bytes handed to OpenCV, which then gives the stored pixels with any
version. (Pillow is no way round: recent versions rotate TIFFs on load too, and some of its
uncompressed grey ones wrongly.) GIFs are decoded by Pillow (OpenCV reads GIF only in recent
versions).
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pspnet.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "MAX_PIXELS",
    "colour_mask_to_ids",
    "image_orientation",
    "read_image",
    "read_mask",
]

MAX_PIXELS = 20000 * 20000
"""Largest image (width x height) read by default; larger files are refused before decoding."""

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
"""File suffixes (lower case) treated as images when scanning folders (``.jfif``: JPEGs saved by
Windows and browsers; ``.gif``: the first frame)."""
MASK_EXTENSIONS = (".png", ".bmp", ".pgm", ".tif", ".tiff")
"""Lossless suffixes accepted for label masks (a JPEG mask would have blurred label values)."""

_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()
_APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"
"""First bytes of a macOS AppleDouble file (``._name``, written beside every file copied from a Mac
to a FAT/exFAT/SMB volume or a zip): metadata, never pixels."""


@dataclass(frozen=True)
class _Header:
    size: tuple[int, int]  # (width, height) as stored
    orientation: int  # EXIF orientation, 1 when absent (always 1 for masks)
    format: str | None  # Pillow's format name ("JPEG", "TIFF", ...)


@contextlib.contextmanager
def _no_pillow_pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb limit lifted for the block: this module checks ``max_pixels``
    itself from the header, with a clearer message. The limit is a Pillow global, hence the lock
    (DataLoader worker threads, a server's request threads)."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _png_orientation(im: Image.Image) -> int:
    """EXIF orientation of a PNG from an ``eXIf`` chunk before the pixels (where the PNG spec puts
    it). Not ``im.getexif()``: for a PNG it decodes the whole image to look for a chunk after
    the pixels, which doubled the cost of reading every PNG in the training loader."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(_EXIF_ORIENTATION, 1))


def _header(path: Path, max_pixels: int, orientation: bool = True) -> _Header | None:
    """Size, EXIF orientation and format from the header, or None if Pillow cannot parse it.

    Pillow's own decompression-bomb check is lifted while opening, because this function applies
    ``max_pixels`` itself and gives a clearer message. ``orientation=False`` skips EXIF (masks).
    """
    try:
        with _no_pillow_pixel_limit(), Image.open(path) as im:
            size, image_format = im.size, im.format
            exif_orientation = 1
            if orientation and im.format in ("JPEG", "TIFF", "WEBP", "PNG"):
                try:
                    if im.format == "PNG":
                        exif_orientation = _png_orientation(im)
                    else:
                        exif_orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
                except Exception:  # a corrupt EXIF block must not make the pixels unreadable
                    exif_orientation = 1
    except UnidentifiedImageError:
        return None
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if size[0] * size[1] > max_pixels:
        reader = "read_image" if orientation else "read_mask"  # no command has an option for it
        raise DataError(
            f"{path}: image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than the limit "
            f"of {max_pixels}; resize it, or if this size is intended read it in Python with "
            f"{reader}(path, max_pixels=N)"
        )
    return _Header(size, exif_orientation, image_format)


def image_orientation(path: str | Path) -> int:
    """The EXIF orientation (1-8) that :func:`read_image` applies to this file; 1 when it has none.

    For messages and reports about masks, which must match the image as shown (rotated), not as
    its pixels are stored. Reads the header only.
    """
    header = _header(Path(path), max_pixels=2**62)
    return 1 if header is None else header.orientation


def _apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip decoded pixels so they look as the camera meant (EXIF tag 274, values 1-8)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(image, -1)
    if orientation == 7:
        return image.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(image, 1)
    return image


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: not a readable image (empty file)")


def _check_complete(path: Path) -> None:
    """Fully decode with Pillow, which raises on a truncated JPEG (some OpenCV versions pad it with grey)."""
    try:
        with _no_pillow_pixel_limit(), Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _refuse_known_non_image(path: Path) -> None:
    """Name the non-image files that folders of images often hold, instead of "corrupt?"."""
    with open(path, "rb") as handle:
        head = handle.read(len(_APPLEDOUBLE_MAGIC))
    if head == _APPLEDOUBLE_MAGIC:
        raise DataError(
            f"{path}: macOS metadata file (AppleDouble), not an image; delete these with "
            f"find {shlex.quote(str(path.parent))} -name '._*' -delete"
        )


def _decode_gif(path: Path) -> np.ndarray:
    """The first frame of a GIF as RGB ``uint8`` (GIFs carry no orientation)."""
    try:
        with _no_pillow_pixel_limit(), Image.open(path) as im:  # the size was checked from the header
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _tiff_without_orientation(data: np.ndarray) -> tuple[np.ndarray, int]:
    """``(bytes with the first page's Orientation tag set to 1, the orientation it had)``.

    Decoded from these bytes, a TIFF comes out as stored with every OpenCV version (see the
    module docstring), and the orientation is applied once by :func:`_apply_exif_orientation`.
    Returns the bytes unchanged and 1 when the file has no such tag (or a header this reader does
    not follow, which libtiff would refuse anyway). Reads only the header and the first directory.
    """
    order = {b"II": "little", b"MM": "big"}.get(data[:2].tobytes())
    if order is None or data.size < 16:
        return data, 1

    def number(offset: int, size: int) -> int:
        return int.from_bytes(data[offset : offset + size].tobytes(), order)

    version = number(2, 2)
    if version == 42:  # classic TIFF: 4-byte offsets, 12-byte entries
        ifd, count_size, entry_size, value_at = number(4, 4), 2, 12, 8
    elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        ifd, count_size, entry_size, value_at = number(8, 8), 8, 20, 12
    else:
        return data, 1
    if ifd + count_size > data.size:
        return data, 1
    for i in range(min(number(ifd, count_size), 4096)):  # real directories hold a few dozen tags
        entry = ifd + count_size + i * entry_size
        if entry + entry_size > data.size:
            break
        # type 3 (SHORT) is the one the TIFF spec gives the tag
        if number(entry, 2) != _EXIF_ORIENTATION or number(entry + 2, 2) != 3:
            continue
        orientation = number(entry + value_at, 2)
        if not 2 <= orientation <= 8:
            return data, 1
        patched = data.copy()
        patched[entry + value_at : entry + value_at + 2] = np.frombuffer((1).to_bytes(2, order), np.uint8)
        return patched, orientation
    return data, 1


def _jpeg_without_end_marker(data: np.ndarray) -> bool:
    """A JPEG whose last two bytes are not the end-of-image marker: cut short, or followed by junk.

    Checking the last bytes costs nothing, so every reader (training included) sends such files
    to the full Pillow decode: some OpenCV versions pad a cut JPEG with grey after a warning.
    Files with harmless trailing bytes pass that decode and are read normally.
    """
    return (
        data.size >= 4 and data[0] == 0xFF and data[1] == 0xD8 and not (data[-2] == 0xFF and data[-1] == 0xD9)
    )


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS, check_complete: bool = False) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Grey images are repeated to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits (``>> 8``) and the EXIF orientation is applied once, so the result is the
    image as viewers show it (phone photos are often stored sideways with a rotation tag). Of a
    multi-page TIFF or an animated GIF, the first page / frame is read.

    Args:
        path: image file.
        max_pixels: refuse larger images (checked from the header, before decoding).
        check_complete: also decode every file with Pillow, which catches a truncated file that
            OpenCV would pad with grey after a warning. Costs a second decode, so ``verify-dataset``
            and prediction use it; training relies on the free check that sends JPEGs without
            their end marker (the usual sign of a cut file) through the same decode.

    Raises:
        DataError: the file is missing, empty, truncated, not an image (a macOS ``._*`` metadata
            file is named as such), or too large.
    """
    path = Path(path)
    _check_file(path)
    header = _header(path, max_pixels)
    if header is None:
        _refuse_known_non_image(path)
    if header is not None and header.format == "GIF":
        return _decode_gif(path)
    data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it fails on non-ASCII Windows paths
    if header is not None and (check_complete or _jpeg_without_end_marker(data)):
        _check_complete(path)
    orientation = 1 if header is None else header.orientation
    if header is not None and header.format == "TIFF":
        data, orientation = _tiff_without_orientation(data)
    # IMREAD_UNCHANGED: the stored pixels, alpha and 16 bits kept, EXIF orientation not applied
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: not a readable image (OpenCV could not decode it; truncated or corrupt?)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype}; convert it to 8-bit RGB")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        raise DataError(f"{path}: {image.shape[2]} channels; expected grey, RGB or RGBA")
    if orientation != 1:
        image = np.ascontiguousarray(_apply_exif_orientation(image, orientation))
    return image


def colour_mask_to_ids(
    mask: np.ndarray, palette: Sequence[Sequence[int]], *, source: str | Path = "mask"
) -> np.ndarray:
    """Convert an ``(H, W, 3)`` RGB colour mask to class ids, id = position in ``palette``.

    Every colour must be in the palette exactly (no nearest-colour guessing: a colour that is not
    there means an anti-aliased or JPEG-compressed mask, which would silently corrupt labels).
    """
    table = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    keys = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
    packed = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, packed), 0, len(sorted_keys) - 1)
    found = sorted_keys[pos] == packed
    if not found.all():
        bad = packed[~found]
        first = int(bad.flat[0])
        colour = (first >> 16, (first >> 8) & 255, first & 255)
        raise DataError(
            f"{source}: colour {colour} ({int(bad.size)} pixels) is not in the palette of {len(table)} "
            f"colours; fix the mask (anti-aliased or JPEG-compressed?) or pass the full palette"
        )
    dtype = np.uint8 if len(table) <= 256 else np.int32
    return order[pos].astype(dtype)


def read_mask(
    path: str | Path, *, palette: Sequence[Sequence[int]] | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read a label mask as a 2-D integer array of raw label values (not yet mapped to train ids).

    Accepted: single-channel 8/16/32-bit masks, palette ("P") PNGs (the palette *indices* are
    returned, as PASCAL VOC needs), grey+alpha (alpha ignored), and RGB(A) masks whose three
    channels are equal everywhere (grey saved as RGB). A genuine colour mask needs ``palette``
    (one RGB tuple per class id) and is converted exactly.

    Returns:
        ``uint8`` for 8-bit and palette masks, ``uint16``/``int32`` for deeper ones.

    Raises:
        DataError: unreadable file, a JPEG (lossy: its label values are blurred at every edge), or
            a colour mask without (or not matching) a palette.
    """
    path = Path(path)
    _check_file(path)
    if _header(path, max_pixels, orientation=False) is None:
        _refuse_known_non_image(path)
        raise DataError(f"{path}: not a readable image (unknown format)")
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                raise DataError(
                    f"{path}: mask is a JPEG, whose lossy compression changes label values along every "
                    f"edge; save masks as PNG"
                )
            im.load()
            mode = im.mode
            if mode in ("1", "L", "P"):
                mask = np.array(im if mode != "1" else im.convert("L"))
            elif mode in ("I;16", "I;16B", "I;16L"):
                mask = np.array(im).astype(np.uint16)
            elif mode == "I":
                mask = np.array(im).astype(np.int32)
            elif mode == "LA":
                mask = np.array(im.getchannel("L"))
            elif mode in ("RGB", "RGBA"):
                mask = np.array(im.convert("RGB") if mode == "RGBA" else im)
            else:
                raise DataError(
                    f"{path}: mask mode {mode!r} is not supported; save it as a single-channel PNG"
                )
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if mode == "1":
        mask = (mask > 0).astype(np.uint8)
    if mask.ndim == 3:
        if (mask[..., 0] == mask[..., 1]).all() and (mask[..., 1] == mask[..., 2]).all():
            return np.ascontiguousarray(mask[..., 0])
        if palette is None:
            raise DataError(
                f"{path}: looks like an RGB colour mask; name the palette that maps its colours to ids "
                f"(`--mask-palette voc2012` for verify-dataset and eval, `data.mask_palette: voc2012` in a "
                f"training config, `mask_palette=` in Python), or save masks as single-channel PNGs of "
                f"class ids"
            )
        return colour_mask_to_ids(mask, palette, source=path)
    return mask
