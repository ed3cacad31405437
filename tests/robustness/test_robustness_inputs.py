"""Bad inputs: tiny images, odd arrays, broken files, empty folders and missing list entries.

Each case ends in a one-line error that names the file (or the array's problem), or in a
documented handling checked here against a hand computation; never in a traceback or a partial
output file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from robustness_helpers import hidden_leftovers, train_overrides, write_folder_dataset

from pspnet.cli import main
from pspnet.data import imageio
from pspnet.data.datasets import open_dataset
from pspnet.data.preprocess import PYTORCH_PREPROCESS
from pspnet.data.transforms import train_transforms
from pspnet.engine.evaluate import evaluate
from pspnet.engine.inference import predict_probs
from pspnet.errors import DataError, InputError
from pspnet.io.checkpoint import save_model
from pspnet.models.registry import create_model
from pspnet.prediction import predict

CROP = 16
TINY = {"one": (1, 1), "seven": (7, 3), "three": (3, 7)}  # name: (H, W)
MEAN = np.array(PYTORCH_PREPROCESS.mean, dtype=np.float64)
STD = np.array(PYTORCH_PREPROCESS.std, dtype=np.float64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=3).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)  # varied predictions, not one class everywhere
    return net


@pytest.fixture(scope="module")
def model_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """stderr lines, less ``pspnet train``'s informational ``config: PATH`` line."""
    err = capsys.readouterr().err.splitlines()
    return [line for line in err if line.strip() and not line.startswith("config: ")]


def _padded_labels(model: torch.nn.Module, image: np.ndarray, crop: int = CROP) -> np.ndarray:
    """The slide protocol by hand for an image smaller than the crop: one window, mean padding."""
    h, w = image.shape[:2]
    top, left = (crop - h) // 2, (crop - w) // 2
    padded = np.broadcast_to(MEAN, (crop, crop, 3)).copy()
    padded[top : top + h, left : left + w] = image
    x = torch.from_numpy(((padded - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        logits = model(x)["out"]
    return logits[0].argmax(0)[top : top + h, left : left + w].numpy()


# ----------------------------------------------------------------------------- 1x1 and 7x3 images


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_array_in_whole_mode_is_an_input_error_with_the_fix(model: torch.nn.Module, name: str) -> None:
    h, w = TINY[name]
    with pytest.raises(InputError, match=rf"input {h}x{w} is smaller than the minimum 8x8.*mode='slide'"):
        predict(model, _image(h, w))


def test_tiny_image_file_in_whole_mode_names_the_file(model: torch.nn.Module, tmp_path: Path) -> None:
    path = _png(tmp_path / "seven.png", _image(7, 3))
    with pytest.raises(InputError, match=r"seven\.png: input 7x3 is smaller"):
        predict(model, path)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_image_in_slide_mode_is_padded_with_the_mean(model: torch.nn.Module, name: str) -> None:
    image = _image(*TINY[name], seed=3)
    result = predict(model, image, mode="slide", crop_size=CROP)
    assert result.labels.shape == TINY[name]
    np.testing.assert_array_equal(result.labels, _padded_labels(model, image))


def test_tiny_images_through_the_predict_command(
    model: torch.nn.Module, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = {name: _image(*hw, seed=i) for i, (name, hw) in enumerate(TINY.items())}
    for name, image in images.items():
        _png(tmp_path / "in" / f"{name}.png", image)
    _png(tmp_path / "in" / "fine.png", _image(24, 24))
    base = ["predict", str(tmp_path / "in"), "--model", str(model_path), "--no-progress", "--no-overlay"]

    assert main([*base, "--out", str(tmp_path / "whole")]) == 1  # whole: each tiny file skipped, named
    errors = _err_lines(capsys)
    assert len(errors) == 3 and all(any(f"{n}.png" in line for line in errors) for n in TINY)
    assert all("smaller than the minimum 8x8" in line for line in errors)
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["fine.png"]

    out = tmp_path / "slide"
    assert main([*base, "--out", str(out), "--mode", "slide", "--crop-size", str(CROP)]) == 0
    assert _err_lines(capsys) == []
    for name, image in images.items():
        with Image.open(out / f"{name}.png") as im:
            np.testing.assert_array_equal(np.array(im), _padded_labels(model, image))
    assert hidden_leftovers(out) == []


def _tiny_folder(root: Path, label: int = 1) -> Path:
    for name, (h, w) in TINY.items():
        _png(root / "images" / f"{name}.png", np.full((h, w, 3), 200, np.uint8))
        _png(root / "masks" / f"{name}.png", np.full((h, w), label, np.uint8))
    return root


def test_tiny_images_in_training_transforms_are_padded_to_the_crop(tmp_path: Path) -> None:
    root = _tiny_folder(tmp_path / "data")
    plain = open_dataset(
        root, num_classes=3, transform=train_transforms(CROP, scale=None, rotate=None, blur=False, flip=False)
    )
    for index, sample in enumerate(plain.samples):
        h, w = TINY[sample.name]
        top, left = (CROP - h) // 2, (CROP - w) // 2
        expected_mask = np.full((CROP, CROP), 255)
        expected_mask[top : top + h, left : left + w] = 1
        expected_image = np.zeros((3, CROP, CROP))  # the mean padding normalises to exactly 0
        expected_image[:, top : top + h, left : left + w] = ((200 - MEAN) / STD)[:, None, None]
        item = plain[index]
        np.testing.assert_array_equal(item["mask"].numpy(), expected_mask)
        np.testing.assert_allclose(item["image"].numpy(), expected_image, atol=1e-6)

    augmented = open_dataset(root, num_classes=3, transform=train_transforms(CROP))  # scale/rotate/blur/flip
    for epoch in range(4):
        augmented.set_epoch(epoch)
        for index in range(len(augmented)):
            item = augmented[index]
            assert item["image"].shape == (3, CROP, CROP) and torch.isfinite(item["image"]).all()
            assert set(item["mask"].unique().tolist()) <= {1, 255}
            assert (item["mask"] == 1).sum() >= 1  # the labelled pixels survive the padding


def test_training_on_tiny_images_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tiny_folder(tmp_path / "data")
    _png(root / "images" / "big.png", np.full((20, 20, 3), 60, np.uint8))
    _png(root / "masks" / "big.png", np.zeros((20, 20), np.uint8))
    (root / "classes.txt").write_text("a\nb\nc\n")
    sets = train_overrides(tmp_path / "run", **{"optim.iterations": 2, "data.root": str(root)})
    sets += [f"data.crop_size={CROP}", "data.dataset=null", "data.kind=folder", "data.val_split=null"]
    assert main(["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_tiny_images_in_evaluate_slide_are_scored_whole(model: torch.nn.Module, tmp_path: Path) -> None:
    root = _tiny_folder(tmp_path / "data")
    dataset = open_dataset(root, num_classes=3)
    result = evaluate(model, dataset, mode="slide", crop_size=CROP, progress=False)
    expected = np.zeros(3, np.int64)
    for index in range(len(dataset)):
        expected += np.bincount(_padded_labels(model, dataset.load_raw(index)[0]).ravel(), minlength=3)
    assert result.confusion.sum() == sum(h * w for h, w in TINY.values()) == 1 + 21 + 21
    np.testing.assert_array_equal(result.confusion[1], expected)  # every pixel is class 1


def test_tiny_images_in_evaluate_whole_are_named_or_scored(model: torch.nn.Module, tmp_path: Path) -> None:
    dataset = open_dataset(_tiny_folder(tmp_path / "data"), num_classes=3)
    try:
        result = evaluate(model, dataset, mode="whole", progress=False)
    except InputError as exc:
        assert "one.png" in str(exc) or "seven.png" in str(exc) or "three.png" in str(exc)
    else:
        assert result.confusion.sum() == 43


# ----------------------------------------------------------------------------- odd arrays

_REFUSED = {
    "float32 with NaN": (np.full((16, 16, 3), np.nan, np.float32), r"dtype float32; it also holds NaN/Inf"),
    "float32 with Inf": (np.full((16, 16, 3), np.inf, np.float32), r"dtype float32; it also holds NaN/Inf"),
    "float64 0-255": (np.full((16, 16, 3), 100.0), r"dtype float64; float images are ambiguous"),
    "float16": (np.zeros((16, 16, 3), np.float16), r"dtype float16"),
    "int16": (np.zeros((16, 16, 3), np.int16), r"uint8 RGB .*dtype int16"),
    "uint16": (np.zeros((16, 16, 3), np.uint16), r"dtype uint16; convert 16-bit data with \(x >> 8\)"),
    "bool": (np.zeros((16, 16, 3), bool), r"dtype bool"),
    "int64": (np.zeros((16, 16, 3), np.int64), r"dtype int64"),
    "channel-first (3, H, W)": (np.zeros((3, 16, 16), np.uint8), r"channel-first.*transpose\(1, 2, 0\)"),
    "two channels": (np.zeros((16, 16, 2), np.uint8), r"shape \(H, W, 3\) RGB.*got \(16, 16, 2\)"),
    "4-D batch": (np.zeros((1, 16, 16, 3), np.uint8), r"got \(1, 16, 16, 3\)"),
    "1-D": (np.zeros(16, np.uint8), r"got \(16,\)"),
    "empty": (np.zeros((0, 16, 3), np.uint8), r"empty"),
    "a list": ([[1, 2, 3]], r"numpy array"),
    "a tensor": (torch.zeros(16, 16, 3, dtype=torch.uint8), r"numpy array.*got Tensor"),
}


@pytest.mark.parametrize("case", list(_REFUSED))
def test_odd_arrays_are_refused_with_a_message(model: torch.nn.Module, case: str) -> None:
    array, message = _REFUSED[case]
    before = array.copy() if isinstance(array, np.ndarray) else None
    with pytest.raises(InputError, match=message):
        predict(model, array)
    if before is not None:
        np.testing.assert_array_equal(array, before)  # never modified in place


def test_grey_and_rgba_arrays_are_converted_like_files(model: torch.nn.Module) -> None:
    rgb = _image(20, 24, seed=5)
    grey = rgb[:, :, 1].copy()
    expected_grey = predict(model, np.repeat(grey[:, :, None], 3, axis=2)).labels
    np.testing.assert_array_equal(predict(model, grey).labels, expected_grey)
    np.testing.assert_array_equal(predict(model, grey[:, :, None]).labels, expected_grey)
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(predict(model, rgba).labels, predict(model, rgb).labels)
    strided = np.ascontiguousarray(np.repeat(rgb, 2, axis=1))[:, ::2]  # a non-contiguous view
    np.testing.assert_array_equal(predict(model, strided).labels, predict(model, rgb).labels)


def test_predict_probs_refuses_non_finite_float_arrays(model: torch.nn.Module) -> None:
    image = np.full((16, 16, 3), 100.0, np.float32)
    image[3, 4, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predict_probs(model, image)


# ----------------------------------------------------------------------------- broken image files


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width x height`` with almost no pixel data (a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bad_corpus(folder: Path) -> dict[str, str]:
    """Broken files with image suffixes: name -> a fragment of the expected message."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_jpg.jpg").write_bytes(b"")
    (folder / "zero_png.png").write_bytes(b"")
    (folder / "text_png.png").write_text("definitely not an image")
    (folder / "text_jpg.jpg").write_bytes(b"\xff\xd8 nothing after the JPEG marker")
    good_jpg, good_png = folder.parent / "g.jpg", folder.parent / "g.png"
    Image.fromarray(_image(48, 48)).save(good_jpg, quality=90)
    Image.fromarray(_image(48, 48)).save(good_png)
    (folder / "cut_jpg.jpg").write_bytes(good_jpg.read_bytes()[: good_jpg.stat().st_size // 2])
    (folder / "cut_png.png").write_bytes(good_png.read_bytes()[: good_png.stat().st_size // 2])
    (folder / "huge.png").write_bytes(_png_header_only(30000, 30000))
    return {
        "zero_jpg.jpg": "empty file",
        "zero_png.png": "empty file",
        "text_png.png": "not a readable image",
        "text_jpg.jpg": "not a readable image",
        "cut_jpg.jpg": "not a readable image",
        "cut_png.png": "not a readable image",
        "huge.png": "30000x30000 = 900000000 pixels, more than the limit of 400000000",
    }


def test_huge_image_is_refused_from_its_header_before_any_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 2.7 GB of pixels announced in 94 bytes

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(imageio.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(imageio.Image.Image, "load", no_decoding)
    with pytest.raises(DataError, match=r"huge\.png: image is 30000x30000 .* limit of 400000000"):
        imageio.read_image(path)
    with pytest.raises(DataError, match=r"huge\.png: image is 30000x30000"):
        imageio.read_mask(path)


def test_broken_files_through_the_predict_command(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _bad_corpus(tmp_path / "in")
    _png(tmp_path / "in" / "fine.png", _image(20, 20))
    _png(tmp_path / "in" / "deep.png", (np.arange(400, dtype=np.uint16).reshape(20, 20) * 150))  # 16-bit grey
    _png(tmp_path / "in" / "rgba.png", np.dstack([_image(20, 20), np.full((20, 20), 9, np.uint8)]))
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "--model", str(model_path), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    errors = _err_lines(capsys)
    assert len(errors) == len(corpus)
    for name, fragment in corpus.items():
        line = next(line for line in errors if f"{name}:" in line)
        assert fragment in line and "Traceback" not in line
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{s}{x}" for s in ("deep", "fine", "rgba") for x in (".png", "_overlay.jpg"))


def test_a_broken_file_met_by_a_dataloader_worker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder_dataset(tmp_path / "data", n=4)
    broken = data / "images" / "train" / "002.png"
    broken.write_bytes(b"")
    sets = train_overrides(tmp_path / "run", **{"data.root": str(data), "data.num_workers": 1})
    sets += ["data.crop_size=32", "data.dataset=null", "data.verify=false"]  # only the loader meets it
    assert main(["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]) == 2
    errors = _err_lines(capsys)
    assert errors == [f"pspnet train: error: {broken}: not a readable image (empty file)"]


# ----------------------------------------------------------------------------- empty folders, missing entries


def test_empty_dataset_folders_are_named(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DataError, match=rf"{bare}: dataset layout not recognised"):
        open_dataset(bare)
    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    with pytest.raises(DataError, match=rf"{folder}: no samples found for folder split 'train'"):
        open_dataset(folder, num_classes=3)
    listing = tmp_path / "train.txt"
    listing.write_text("\n\n")
    with pytest.raises(DataError, match=rf"{listing}: no samples found"):
        open_dataset(listing, "list", num_classes=3)


def test_empty_folders_through_the_commands(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert (
        main(["predict", str(empty / "images"), "--model", str(model_path), "--out", str(tmp_path / "o")])
        == 2
    )
    assert _err_lines(capsys) == [
        f"pspnet predict: error: no images found in {empty / 'images'} (no such file, or no images in it)"
    ]  # one line, not a "skipped" line and then the error
    assert not (tmp_path / "o").exists()
    sets = [*train_overrides(tmp_path / "run", **{"data.root": str(empty)}), "data.dataset=null"]
    assert main(["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]) == 2
    assert _err_lines(capsys) == [f"pspnet train: error: {empty}: no samples found for folder split 'train'"]
    assert main(["verify-dataset", str(empty), "--num-classes", "3", "--no-progress"]) == 2
    assert f"{empty}: no samples found" in _err_lines(capsys)[-1]
    assert main(["eval", "--model", str(model_path), "--data", str(empty), "--split", "train"]) == 2
    assert f"{empty}: no samples found" in _err_lines(capsys)[-1]


def test_list_file_pointing_at_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folder_dataset(tmp_path / "data", n=2)
    listing = data / "train.txt"
    listing.write_text(
        "images/train/000.png masks/train/000.png\n"
        "images/train/001.png masks/train/001.png\n"
        "images/train/gone.png masks/train/000.png\n"
    )
    with pytest.raises(DataError, match=r"gone\.png: listed at train\.txt:3 but missing"):
        open_dataset(listing, "list", num_classes=3)
    assert (
        main(["verify-dataset", str(listing), "--kind", "list", "--num-classes", "3", "--no-progress"]) == 1
    )
    assert "gone.png" in capsys.readouterr().out
    sets = train_overrides(tmp_path / "run", **{"data.root": str(listing), "data.kind": "list"})
    sets += ["data.dataset=null", "data.crop_size=32"]
    assert main(["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]) == 2
    errors = _err_lines(capsys)
    assert len(errors) == 1 and "gone.png: listed at train.txt:3 but missing" in errors[0]
