"""``pspnet.predict`` and the ``pspnet predict`` command, in-process, with a tiny model file."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import create_model
from pspnet.cli import main
from pspnet.engine.inference import predict_probs
from pspnet.io.checkpoint import load_model, save_model
from pspnet.prediction import Prediction, load_image, predict


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)  # varied predictions, not one class everywhere
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(model_path: Path) -> torch.nn.Module:
    return load_model(model_path).eval()


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def test_predict_array_matches_the_argmax_of_the_probabilities(model: torch.nn.Module) -> None:
    image = _image(37, 53, seed=0)
    result = predict(model, image, return_probs=True)
    probs = predict_probs(model, image)
    assert isinstance(result, Prediction)
    assert result.labels.shape == (37, 53) and result.labels.dtype == np.uint8
    assert np.array_equal(result.labels, probs.argmax(0).numpy())
    assert len(np.unique(result.labels)) > 1
    assert result.probs is not None and result.probs.shape == (4, 37, 53)
    assert result.confidence is not None
    assert np.allclose(result.confidence, probs.max(0).values.numpy())


def test_predict_without_extras_keeps_only_labels(model: torch.nn.Module) -> None:
    result = predict(model, _image(20, 20, seed=1))
    assert result.probs is None and result.confidence is None
    assert predict(model, _image(20, 20, seed=1), return_confidence=True).probs is None


def test_predict_reads_paths_and_model_files(
    model: torch.nn.Module, model_path: Path, tmp_path: Path
) -> None:
    image = _image(30, 41, seed=2)
    path = _write_png(tmp_path / "x.png", image)
    expected = predict(model, image).labels
    assert np.array_equal(predict(model, path).labels, expected)
    assert np.array_equal(predict(model_path, str(path)).labels, expected)


def test_predict_handles_grey_rgba_and_16_bit_files(model: torch.nn.Module, tmp_path: Path) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (24, 31), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([_image(24, 31, seed=4), np.full((24, 31), 7, dtype=np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "deep.png"), grey.astype(np.uint16) * 257)
    rgb_grey = np.repeat(grey[..., None], 3, axis=2)
    assert np.array_equal(load_image(tmp_path / "grey.png"), rgb_grey)
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgba[..., :3])
    assert np.array_equal(load_image(tmp_path / "deep.png"), rgb_grey)
    for name in ("grey.png", "rgba.png", "deep.png"):
        assert predict(model, tmp_path / name).labels.shape == (24, 31)


def test_predict_refuses_a_float_array(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8"):
        predict(model, np.zeros((20, 20, 3), dtype=np.float32))


def _inputs(tmp_path: Path) -> dict[str, np.ndarray]:
    images = {"a": _image(37, 53, 10), "b": _image(40, 29, 11), "c": _image(33, 33, 12)}
    _write_png(tmp_path / "in" / "dir" / "a.png", images["a"])
    _write_png(tmp_path / "in" / "dir" / "b.png", images["b"])
    (tmp_path / "in" / "dir" / "broken.png").write_bytes(b"")  # zero bytes: unreadable
    (tmp_path / "in" / "dir" / "notes.txt").write_text("not an image, not picked from a folder")
    _write_png(tmp_path / "in" / "glob" / "c.png", images["c"])
    return images


def test_predict_command_writes_label_pngs_and_skips_a_corrupt_input(
    model: torch.nn.Module, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _inputs(tmp_path)
    out = tmp_path / "out"
    status = main(
        [
            "predict",
            str(tmp_path / "in" / "dir"),
            str(tmp_path / "in" / "glob" / "*.png"),
            "--model",
            str(model_path),
            "--out",
            str(out),
            "--confidence",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 2 and "broken.png" in errors[1]
    assert "note: skipped 1 file(s) in" in errors[0] and "not images by suffix (.txt)" in errors[0]
    assert "1 input(s) failed" in captured.out
    expected_files = {f"{s}{suffix}" for s in "abc" for suffix in (".png", "_overlay.jpg", "_confidence.png")}
    assert {p.name for p in out.iterdir()} == expected_files  # nothing for broken.png, no temp files
    for stem, image in images.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P"
            labels = np.array(im)
        assert labels.shape == image.shape[:2]
        assert np.array_equal(labels, predict(model, image).labels)
        with Image.open(out / f"{stem}_overlay.jpg") as im:
            assert im.size == (image.shape[1], image.shape[0])
        confidence = cv2.imread(str(out / f"{stem}_confidence.png"), cv2.IMREAD_UNCHANGED)
        assert confidence.shape == image.shape[:2] and confidence.min() >= 255 // 4


def test_predict_command_all_good_exits_zero_without_overlays(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_png(tmp_path / "one.png", _image(25, 30, 13))
    out = tmp_path / "out"
    argv = [
        "predict",
        str(path),
        "--model",
        str(model_path),
        "--out",
        str(out),
        "--no-overlay",
        "--no-progress",
    ]
    assert main([*argv, "--mode", "slide", "--crop-size", "17", "--flip", "--scales", "0.75", "1.0"]) == 0
    assert [p.name for p in out.iterdir()] == ["one.png"]
    assert capsys.readouterr().err == ""


def test_predict_command_missing_input_is_reported_and_fails(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_png(tmp_path / "one.png", _image(20, 20, 14))
    argv = [
        "predict",
        str(path),
        str(tmp_path / "nope.png"),
        "--model",
        str(model_path),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--no-progress"]) == 1
    assert "nope.png" in capsys.readouterr().err
    assert (tmp_path / "o" / "one.png").is_file()


def test_predict_command_user_errors_exit_2(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_png(tmp_path / "x" / "same.png", _image(20, 20, 15))
    _write_png(tmp_path / "y" / "same.png", _image(20, 20, 16))
    argv = [
        "predict",
        str(tmp_path / "x"),
        str(tmp_path / "y"),
        "--model",
        str(model_path),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "same.png" in capsys.readouterr().err
    assert (
        main(["predict", str(tmp_path / "empty*"), "--model", str(model_path), "--out", str(tmp_path / "o")])
        == 2
    )
    assert not (tmp_path / "o").exists()


def test_predict_command_skips_an_image_too_small_for_the_network(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_png(tmp_path / "in" / "big.png", _image(24, 24, 17))
    _write_png(tmp_path / "in" / "tiny.png", _image(4, 5, 18))
    out = tmp_path / "o"
    assert (
        main(
            ["predict", str(tmp_path / "in"), "--model", str(model_path), "--out", str(out), "--no-progress"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "tiny.png" in err and err.count("\n") == 1
    assert "--mode slide" in err and "mode='slide' pads" not in err  # the CLI's spelling, not Python's
    assert sorted(p.name for p in out.iterdir()) == ["big.png", "big_overlay.jpg"]


def test_predict_command_slide_without_crop_size_is_one_error(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_png(tmp_path / "one.png", _image(20, 20, 19))
    argv = ["predict", str(path), "--model", str(model_path), "--out", str(tmp_path / "o"), "--mode", "slide"]
    assert main(argv) == 2
    assert "--crop-size" in capsys.readouterr().err


def test_predict_command_accepts_an_exported_onnx_model(model: torch.nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from pspnet.export import export_onnx

    onnx_path = export_onnx(model, tmp_path / "tiny.onnx")
    image = _image(37, 53, seed=5)
    _write_png(tmp_path / "in" / "img.png", image)
    assert (
        main(["predict", "--model", str(onnx_path), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
        == 0
    )
    written = np.array(Image.open(tmp_path / "out" / "img.png"))
    expected = predict(model, image).labels
    # fp32 onnxruntime vs eager: identical labels except where two classes tie within ~1e-5
    assert written.shape == expected.shape and (written == expected).mean() > 0.99


def test_predict_command_refuses_amp_on_cpu(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_png(tmp_path / "in" / "a.png", _image(20, 20, 3))
    argv = ["predict", str(tmp_path / "in"), "--model", str(model_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cpu", "--amp", "bf16"]) == 2
    assert "--amp bf16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_predict_command_refuses_an_out_that_overwrites_its_inputs(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    _write_png(photos / "photo.png", _image(30, 40, 21))
    _write_png(photos / "b.png", _image(30, 40, 22))
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    argv = ["predict", "--model", str(model_path), "--no-progress"]
    assert main([*argv, str(photos), "--out", str(photos)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input" in err and "choose another --out" in err and err.count("\n") == 1
    monkeypatch.chdir(photos)  # `--out .` from inside the folder, one file given by name
    assert main([*argv, "photo.png", "--out", "."]) == 2
    assert "photo.png with its own prediction" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the same folder spelled another way
    assert main([*argv, "photos/b.png", "--out", "photos/../photos"]) == 2
    # an input named like another input's overlay would be overwritten by that overlay
    shutil.copy(photos / "b.png", tmp_path / "b_overlay.jpg")
    assert main([*argv, str(photos / "b.png"), str(tmp_path / "b_overlay.jpg"), "--out", str(tmp_path)]) == 2
    assert "prediction of" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # nothing was written


def test_predict_command_checks_options_once_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model file does not exist: each error can only come from the upfront check, once."""
    _write_png(tmp_path / "in" / "a.png", _image(20, 20, 23))
    _write_png(tmp_path / "in" / "b.png", _image(20, 20, 24))
    (tmp_path / "afile").write_text("")
    base = [
        "predict",
        str(tmp_path / "in"),
        "--model",
        str(tmp_path / "missing.safetensors"),
        "--no-progress",
    ]
    out = ["--out", str(tmp_path / "o")]
    cases = [
        ([*out, "--scales", "0"], "--scales must be positive numbers, got 0"),
        ([*out, "--base-size", "-3"], "--base-size must be >= 1 pixel, got -3"),
        ([*out, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ([*out, "--mode", "slide", "--crop-size", "-3"], "--crop-size must be >= 1 pixel, got -3"),
        ([*out, "--alpha", "2"], "--alpha must be in [0, 1], got 2.0"),
        ([*out, "--device", "tpu"], "--device 'tpu' is not a device"),
        (["--out", str(tmp_path / "afile")], "--out " + str(tmp_path / "afile")),
    ]
    if not torch.cuda.is_available():
        cases.append(([*out, "--device", "cuda"], "--device cuda requested but no CUDA device is available"))
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "o").exists()


def test_predict_command_does_not_claim_to_write_when_every_input_fails(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    argv = ["predict", str(tmp_path / "in"), "--model", str(model_path), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out and "no prediction written: all 1 input(s) failed" in captured.err
    assert not out.exists()


def _predict(model_path: Path, *args: str) -> int:
    return main(["predict", "--model", str(model_path), "--no-progress", "--device", "cpu", *args])


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_predict_command_recursive_mirrors_the_tree_and_says_what_it_skips(
    model: torch.nn.Module, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    images = {
        "cover.png": _image(20, 24, 30),
        "2023/a.png": _image(21, 25, 31),
        "2024/trip/a.png": _image(22, 26, 32),  # same name as 2023/a.png
    }
    for rel, rgb in images.items():
        _write_png(photos / rel, rgb)
    _write_png(photos / ".thumbs" / "hidden.png", _image(20, 20, 33))  # hidden folder: never searched
    (photos / "empty").mkdir()  # holds no image: not worth a note

    out = tmp_path / "flat"
    assert _predict(model_path, str(photos), "--out", str(out), "--no-overlay") == 0
    captured = capsys.readouterr()
    assert _files(out) == {"cover.png"}  # the flat layout of a plain run is unchanged
    assert captured.err.splitlines() == [
        f"pspnet predict: note: skipped 2 sub-folder(s) of {photos} (not searched; pass --recursive)"
    ]

    out = tmp_path / "tree"
    assert _predict(model_path, str(photos), "--out", str(out), "--recursive", "--no-overlay") == 0
    assert capsys.readouterr().err == ""
    assert _files(out) == set(images)
    for rel, rgb in images.items():
        assert np.array_equal(np.array(Image.open(out / rel)), predict(model, rgb).labels), rel

    # --out inside the input tree: a second run does not predict the first run's outputs
    inner = photos / "pred"
    for _ in range(2):
        assert _predict(model_path, str(photos), "--out", str(inner), "-r", "--no-overlay") == 0
    assert _files(inner) == set(images)


def test_predict_command_no_images_error_names_the_sub_folders(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    albums = tmp_path / "albums"
    _write_png(albums / "2023" / "x.png", _image(20, 20, 34))
    _write_png(albums / "2024" / "y.png", _image(20, 20, 35))
    assert _predict(model_path, str(albums), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no images found in {albums}" in err
    assert "2 sub-folder(s) with images are not searched: pass --recursive" in err
    assert not (tmp_path / "o").exists()


def test_predict_command_globs_span_folders_with_double_star(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "g"
    for rel in ("top.png", "s/mid.png", "s/t/deep.png"):
        _write_png(root / rel, _image(20, 20, len(rel)))
    pattern = str(root / "**" / "*.png")
    assert _predict(model_path, pattern, "--out", str(tmp_path / "flat"), "--no-overlay") == 0
    assert _files(tmp_path / "flat") == {"top.png", "mid.png", "deep.png"}
    assert _predict(model_path, pattern, "--out", str(tmp_path / "tree"), "-r", "--no-overlay") == 0
    assert _files(tmp_path / "tree") == {"top.png", "s/mid.png", "s/t/deep.png"}
    # same names in two sub-folders: flat outputs would collide; the message points at --recursive
    _write_png(root / "s" / "t" / "top.png", _image(20, 20, 40))
    assert _predict(model_path, pattern, "--out", str(tmp_path / "clash"), "--no-overlay") == 2
    err = capsys.readouterr().err
    assert "would both write" in err and "pass --recursive" in err and err.count("\n") == 1


def test_predict_command_skips_hidden_files_of_a_folder(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """macOS' ._* AppleDouble files (and .DS_Store) sit beside every image on a copied folder."""
    folder = tmp_path / "mac"
    _write_png(folder / "a.png", _image(20, 20, 41))
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    out = tmp_path / "o"
    assert _predict(model_path, str(folder), "--out", str(out)) == 0
    assert capsys.readouterr().err == ""
    assert _files(out) == {"a.png", "a_overlay.jpg"}
    # a hidden file named explicitly is read
    _write_png(folder / ".b.png", _image(20, 20, 42))
    assert _predict(model_path, str(folder / ".b.png"), "--out", str(out), "--no-overlay") == 0
    assert (out / ".b.png").is_file()


def test_predict_command_counts_skipped_files_and_broken_links(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.data.imageio import IMAGE_EXTENSIONS

    folder = tmp_path / "mixed"
    _write_png(folder / "ok.png", _image(20, 20, 43))
    others = [".txt", ".json", ".json", ".xyz", ".abc", ".csv", ""]  # 6 distinct, listed up to 5
    assert not set(others) & set(IMAGE_EXTENSIONS)
    for i, suffix in enumerate(others):
        (folder / f"f{i}{suffix}").write_text("x")
    (folder / "gone.png").symlink_to(tmp_path / "missing" / "photo.png")
    assert _predict(model_path, str(folder), "--out", str(tmp_path / "o")) == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        f"pspnet predict: note: skipped 7 file(s) in {folder} that are not images by suffix "
        "(.json, no suffix, .abc, .csv, .txt, ...); give a file by name to read it anyway",
        f"pspnet predict: note: skipped 1 broken symbolic link(s) in {folder} (the file they point to "
        f"does not exist): {folder / 'gone.png'}",
    ]
    assert _files(tmp_path / "o") == {"ok.png", "ok_overlay.jpg"}


def test_predict_command_refuses_inputs_whose_outputs_share_a_name(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --confidence the label PNG of a_confidence.jpg is a.jpg's confidence map."""
    shots = tmp_path / "shots"
    shots.mkdir()
    Image.fromarray(_image(30, 40, 44)).save(shots / "a.jpg")
    Image.fromarray(_image(20, 24, 45)).save(shots / "a_confidence.jpg")
    out = tmp_path / "o"
    missing_model = tmp_path / "missing.safetensors"  # refused before the model is even opened
    assert _predict(missing_model, str(shots), "--out", str(out), "--confidence") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"{shots / 'a.jpg'} and {shots / 'a_confidence.jpg'} would both write {out / 'a_confidence.png'}"
        in err
    )
    assert not out.exists()
    assert _predict(model_path, str(shots), "--out", str(out)) == 0  # no confidence maps: no clash
    assert _files(out) == {"a.png", "a_overlay.jpg", "a_confidence.png", "a_confidence_overlay.jpg"}


def test_predict_command_replaces_an_earlier_run_and_removes_its_stale_companions(
    model: torch.nn.Module, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(30, 40, 46)
    path = _write_png(tmp_path / "in" / "a.png", image)
    out = tmp_path / "o"
    _write_png(out / "unrelated_overlay.jpg", _image(8, 8, 47))  # not an output of this run's inputs
    assert _predict(model_path, str(path), "--out", str(out), "--confidence") == 0
    assert capsys.readouterr().out == f"wrote 1 prediction(s) to {out}\n"
    (out / "a.png").write_bytes(b"old")  # mark the first run's label PNG
    assert _predict(model_path, str(path), "--out", str(out), "--no-overlay") == 0
    assert capsys.readouterr().out == (
        f"wrote 1 prediction(s) to {out} (replaced 1 existing file(s); "
        "removed 2 stale overlay/confidence file(s) of an earlier run)\n"
    )
    assert _files(out) == {"a.png", "unrelated_overlay.jpg"}  # one image, one run's outputs
    assert np.array_equal(np.array(Image.open(out / "a.png")), predict(model, image).labels)


def test_predict_command_never_removes_another_inputs_output_as_stale(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --confidence, a_confidence.png is a.png's stale name but a_confidence.jpg's label PNG."""
    first = _write_png(tmp_path / "in" / "a_confidence.png", _image(20, 20, 48))
    second = _write_png(tmp_path / "in" / "a.png", _image(20, 20, 49))
    out = tmp_path / "o"
    assert _predict(model_path, str(first), str(second), "--out", str(out), "--no-overlay") == 0
    assert _files(out) == {"a.png", "a_confidence.png"}
    assert "removed" not in capsys.readouterr().out
    # nor an input: --out = the input folder, where a_overlay.jpg is a photo, not a's old overlay
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed in (("a.jpg", 50), ("a_overlay.jpg", 51)):
        Image.fromarray(_image(20, 20, seed)).save(photos / name)
    photo = (photos / "a_overlay.jpg").read_bytes()
    assert _predict(model_path, str(photos), "--out", str(photos), "--no-overlay") == 0
    assert (photos / "a_overlay.jpg").read_bytes() == photo
    assert _files(photos) == {"a.jpg", "a_overlay.jpg", "a.png", "a_overlay.png"}


@pytest.mark.parametrize("fail_in", ["save_label_png", "save_image"])
def test_predict_command_interrupted_image_keeps_one_runs_outputs(
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fail_in: str,
) -> None:
    """Ctrl-C while b's outputs are written: a keeps its full set; b keeps the earlier run's full
    set if nothing of it was replaced yet (interrupted in the label PNG), else nothing."""
    import pspnet.viz

    folder = tmp_path / "in"
    for stem, seed in (("a", 50), ("b", 51)):
        _write_png(folder / f"{stem}.png", _image(20, 20, seed))
    out = tmp_path / "o"
    old = {f"b{suffix}": suffix.encode() for suffix in (".png", "_overlay.jpg", "_confidence.png")}
    out.mkdir()
    for name, data in old.items():
        (out / name).write_bytes(data)
    real = getattr(pspnet.viz, fail_in)

    def interrupted(path: Path, *args: object, **kwargs: object) -> Path:
        if Path(path).name.startswith("b"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pspnet.viz, fail_in, interrupted)
    assert _predict(model_path, str(folder), "--out", str(out), "--confidence") == 130
    assert "interrupted" in capsys.readouterr().err
    names = {p.name for p in out.iterdir()}  # also shows that no temporary file is left
    a_set = {"a.png", "a_overlay.jpg", "a_confidence.png"}
    if fail_in == "save_label_png":
        assert names == a_set | set(old)
        assert {name: (out / name).read_bytes() for name in old} == old
    else:
        assert names == a_set
