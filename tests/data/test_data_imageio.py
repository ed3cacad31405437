"""read_image / read_mask: colour conversions, EXIF, limits, palette masks and clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pspnet.data import imageio
from pspnet.data.imageio import colour_mask_to_ids, read_image, read_mask
from pspnet.data.info import VOC2012
from pspnet.errors import DataError


def _pattern(h: int = 6, w: int = 9) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_rgb_round_trip_and_non_ascii_path(tmp_path: Path) -> None:
    image = _pattern()
    path = tmp_path / "dossier é 图像" / "photo ü.png"
    path.parent.mkdir()
    Image.fromarray(image).save(path)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (6, 9, 3)
    np.testing.assert_array_equal(got, image)  # RGB order, not OpenCV's BGR


def test_grey_rgba_and_16bit(tmp_path: Path) -> None:
    grey = _pattern()[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.stack([grey] * 3, axis=-1))

    rgba = np.dstack([_pattern(), np.full((6, 9), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])

    deep = np.arange(6 * 9 * 3, dtype=np.uint16).reshape(6, 9, 3) * 400  # up to 64400
    cv2.imwrite(str(tmp_path / "d.png"), deep[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), (deep // 256).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    image = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"  # lossless, so Pillow's reference transpose compares exactly
    Image.fromarray(image).save(path, exif=exif)
    expected = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)


def test_exif_rotation_on_jpeg(tmp_path: Path) -> None:
    image = np.zeros((40, 64, 3), np.uint8)
    image[:20, :32] = (255, 0, 0)  # red block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(image).save(path, exif=exif, quality=95)
    got = read_image(path)
    assert got.shape == (64, 40, 3)
    # after a clockwise quarter turn the top-left block is at the top-right
    assert got[:32, 20:, 0].mean() > 200 and got[:32, 20:, 1].mean() < 50
    assert got[:32, :20, 0].mean() < 50


def test_bad_files_raise_data_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    png = tmp_path / "good.png"
    Image.fromarray(_pattern(64, 64)).save(png)
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[:200])
    for path in (empty, text, cut_png, tmp_path / "missing.png"):
        with pytest.raises(DataError, match=str(path.name)):
            read_image(path)
        with pytest.raises(DataError, match=str(path.name)):
            read_mask(path)
    with pytest.raises(DataError, match=r"cut\.jpg: not a readable image"):
        read_image(truncated, check_complete=True)  # OpenCV alone would pad the missing half with grey
    assert read_image(good, check_complete=True).shape == (64, 64, 3)


def test_huge_image_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(path)
    # no command has an option for the limit: the message names the Python call that raises it
    with pytest.raises(DataError, match=r"big\.png.*400x300.*read_image\(path, max_pixels=N\)$"):
        read_image(path, max_pixels=100_000)
    with pytest.raises(DataError, match=r"big\.png.*read_mask\(path, max_pixels=N\)$"):
        read_mask(path, max_pixels=100_000)
    assert read_image(path, max_pixels=120_000).shape == (300, 400, 3)


def test_palette_png_returns_indices(tmp_path: Path) -> None:
    mask = np.array([[0, 15, 255], [1, 20, 0]], np.uint8)
    im = Image.fromarray(mask, mode="P")
    im.putpalette([c for col in VOC2012.palette for c in col] + [224, 224, 192] * 235)
    im.save(tmp_path / "voc.png")
    got = read_mask(tmp_path / "voc.png")
    assert got.ndim == 2
    np.testing.assert_array_equal(got, mask)


def test_grey_and_16bit_masks(tmp_path: Path) -> None:
    mask = np.array([[0, 3], [255, 7]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    deep = np.array([[0, 300], [65535, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    got = read_mask(tmp_path / "d.png")
    np.testing.assert_array_equal(got.astype(np.int64), deep.astype(np.int64))
    grey_rgb = np.repeat(mask[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), mask)


def test_colour_mask_needs_palette_and_converts_exactly(tmp_path: Path) -> None:
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    ids = np.array([[0, 1, 2], [2, 2, 1]])
    colour = np.array([[palette[i] for i in row] for row in ids], np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(colour).save(path)
    with pytest.raises(
        DataError,
        match=r"colour\.png.*RGB colour mask.*palette.*`--mask-palette voc2012` for verify-dataset and eval",
    ):
        read_mask(path)
    np.testing.assert_array_equal(read_mask(path, palette=palette), ids)

    colour[1, 0] = colour[1, 1] = (1, 2, 3)
    Image.fromarray(colour).save(path)
    with pytest.raises(DataError, match=r"colour\.png: colour \(1, 2, 3\) \(2 pixels\)"):
        read_mask(path, palette=palette)


def test_colour_mask_to_ids_with_unsorted_palette() -> None:
    palette = [(200, 0, 0), (0, 0, 5), (10, 10, 10)]
    mask = np.array([[[0, 0, 5], [200, 0, 0], [10, 10, 10]]], np.uint8)
    np.testing.assert_array_equal(colour_mask_to_ids(mask, palette), [[1, 0, 2]])


def test_png_pixels_are_decoded_once_per_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the EXIF orientation of a PNG must not make Pillow decode the pixels as well: the
    training loader reads two PNGs per sample, and the extra decodes halved its speed."""
    from PIL import ImageFile

    loads: list[str] = []
    original = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> object:
        if self.tile:  # pixels still to decode (Pillow clears the tiles once decoded)
            loads.append(self.format or "")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    Image.fromarray(_pattern()).save(tmp_path / "image.png")
    Image.fromarray((_pattern()[..., 0] % 7).astype(np.uint8)).save(tmp_path / "mask.png")
    read_image(tmp_path / "image.png")  # OpenCV decodes the pixels
    assert loads == []
    assert read_mask(tmp_path / "mask.png").shape == _pattern().shape[:2]
    assert loads == ["PNG"]  # Pillow decodes the mask (palette indices) once


def test_jpeg_mask_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, quality=95)
    with pytest.raises(DataError, match=r"m\.jpg: mask is a JPEG.*save masks as PNG"):
        read_mask(path)


def test_a_jpeg_without_its_end_marker_gets_the_full_decode_even_without_check_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training reads without ``check_complete``; OpenCV before 5 padded a cut JPEG with grey.

    ``cv2.imdecode`` is replaced by one that pads (as those versions did), so the test holds on any
    OpenCV: the cut file must still be refused, and complete JPEGs (also with trailing bytes after
    the end marker, which some cameras write) must not pay the second decode.
    """
    good = tmp_path / "good.jpg"
    Image.fromarray(_pattern(64, 64)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) * 3 // 4])
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(good.read_bytes() + b"\x00camera-notes")
    monkeypatch.setattr(imageio.cv2, "imdecode", lambda data, flags: np.full((64, 64, 3), 128, np.uint8))
    full_decodes: list[str] = []
    real_check = imageio._check_complete
    monkeypatch.setattr(imageio, "_check_complete", lambda p: (full_decodes.append(p.name), real_check(p)))
    with pytest.raises(DataError, match=r"cut\.jpg: not a readable image"):
        read_image(cut)
    assert read_image(good).shape == (64, 64, 3)
    assert read_image(trailing).shape == (64, 64, 3)
    assert full_decodes == ["cut.jpg", "trailing.jpg"]


# ----------------------------------------------------------------------------- orientation per format

_SHOWN = np.random.default_rng(5).integers(0, 256, (6, 10, 3), dtype=np.uint8)  # as viewers show it


def _stored_grid(shown: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that the tag ``orientation`` displays ``shown`` (EXIF spec,
    written by hand: the inverse of each display transform)."""
    inverse = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored: its own inverse
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),  # transposed: its own inverse
        6: lambda a: np.rot90(a, 1),  # shown = stored turned clockwise, so store it turned back
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, -1),
    }
    return np.ascontiguousarray(inverse[orientation](shown))


def _tagged(path: Path, orientation: int, **save: object) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_stored_grid(_SHOWN, orientation)).save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
@pytest.mark.parametrize(
    ("suffix", "save"),
    [(".tif", {}), (".tif", {"compression": "tiff_lzw"}), (".webp", {"lossless": True}), (".png", {})],
    ids=["tiff", "tiff-lzw", "webp", "png"],
)
def test_orientation_is_applied_exactly_once_in_every_format(
    tmp_path: Path, suffix: str, save: dict[str, object], orientation: int
) -> None:
    """OpenCV 5's TIFF decoder applies the tag itself (even with IMREAD_UNCHANGED): a TIFF came out
    rotated twice. Every format must give the image as viewers show it."""
    path = _tagged(tmp_path / f"o{orientation}{suffix}", orientation, **save)
    np.testing.assert_array_equal(read_image(path), _SHOWN)
    # what viewers show, per Pillow (for RGB files; see the grey test for a Pillow TIFF bug)
    np.testing.assert_array_equal(read_image(path), np.array(ImageOps.exif_transpose(Image.open(path))))


@pytest.mark.parametrize("orientation", [3, 6])
def test_orientation_of_grey_and_16_bit_tiffs(tmp_path: Path, orientation: int) -> None:
    """Grey TIFFs too (Pillow 13 itself misreads uncompressed grey TIFFs tagged 5-8, so the
    expectation is built by hand), and 16-bit ones, scaled to 8 bits."""
    grey = _SHOWN[..., 0]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_stored_grid(grey, orientation)).save(tmp_path / "g.tif", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif"), np.stack([grey] * 3, axis=-1))
    deep = _stored_grid(grey, orientation).astype(np.uint16) * 257  # high byte = the 8-bit value
    Image.fromarray(deep).save(tmp_path / "d.tif", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "d.tif"), np.stack([grey] * 3, axis=-1))


def test_big_endian_tiff_orientation(tmp_path: Path) -> None:
    """The tag is neutralised in the file's byte order ("MM" TIFFs are written by some scanners)."""
    stored = _stored_grid(_SHOWN, 6)
    h, w = stored.shape[:2]
    entries = [  # tag, type (3 SHORT, 4 LONG), value; uncompressed RGB, one strip
        (256, 3, w), (257, 3, h), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 0), (274, 3, 6),
        (277, 3, 3), (278, 3, h), (279, 4, h * w * 3),
    ]  # fmt: skip
    pixels_at = 8 + 2 + 12 * len(entries) + 4
    ifd = len(entries).to_bytes(2, "big")
    for tag, kind, value in entries:
        value = pixels_at if tag == 273 else value
        field = value.to_bytes(2, "big") + b"\0\0" if kind == 3 else value.to_bytes(4, "big")
        ifd += tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + (1).to_bytes(4, "big") + field
    path = tmp_path / "mm.tif"
    path.write_bytes(b"MM\0\x2a" + (8).to_bytes(4, "big") + ifd + bytes(4) + stored.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6  # the file is what it claims
    np.testing.assert_array_equal(read_image(path), _SHOWN)


def test_gif_jfif_and_jpe_are_images(tmp_path: Path) -> None:
    """Windows and browsers save JPEGs as .jfif; a GIF gives its first frame (Pillow decodes GIFs:
    OpenCV reads them only in recent versions)."""
    assert {".gif", ".jfif", ".jpe"} <= set(imageio.IMAGE_EXTENSIONS)
    first, second = _pattern(16, 24), 255 - _pattern(16, 24)
    Image.fromarray(first).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(second)])
    expected = np.array(Image.open(tmp_path / "anim.gif").convert("RGB"))  # frame 0, GIF-quantised
    np.testing.assert_array_equal(read_image(tmp_path / "anim.gif"), expected)
    for name in ("download.jfif", "old.jpe"):
        Image.fromarray(first).save(tmp_path / name, format="JPEG", quality=95)
        pillow = np.array(Image.open(tmp_path / name).convert("RGB")).astype(int)  # another JPEG decoder
        assert np.abs(read_image(tmp_path / name).astype(int) - pillow).max() <= 2


def test_macos_appledouble_file_is_named_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "from a mac"
    folder.mkdir()
    path = folder / "._photo.jpg"
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200))
    for reader in (read_image, read_mask):
        with pytest.raises(
            DataError, match=r"\._photo\.jpg: macOS metadata file \(AppleDouble\), not an image"
        ) as info:
            reader(path)
        assert f"find '{folder}' -name '._*' -delete" in str(info.value)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    (tmp_path / "shots.png").mkdir()
    with pytest.raises(DataError, match=r"shots\.png: is a folder, not an image file"):
        read_image(tmp_path / "shots.png")
