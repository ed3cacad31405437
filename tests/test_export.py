"""ONNX export: exact at sizes the pooling bins do not divide, metadata round trip, CLI, int8."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pspnet import create_model
from pspnet.cli import main
from pspnet.data.info import VOC2012
from pspnet.data.preprocess import Preprocess
from pspnet.engine.inference import predict_probs
from pspnet.errors import InputError
from pspnet.export import DynamicAdaptivePool2d, OnnxModel, export_onnx, quantize_int8, verify_onnx
from pspnet.io.checkpoint import save_model
from pspnet.prediction import predict


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("pspnet_tiny", num_classes=21).eval()
    model.dataset_info = VOC2012
    model.preprocess = Preprocess(mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0), channel_order="rgb")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", example_size=(129, 129))
    return model, path


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 17), (12, 12), (9, 25)])
def test_dynamic_pool_equals_adaptive_pool(mode: str, bins: int, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    reference = F.adaptive_avg_pool2d(x, bins) if mode == "avg" else F.adaptive_max_pool2d(x, bins)
    assert torch.allclose(DynamicAdaptivePool2d(bins, mode)(x), reference, atol=1e-5, rtol=0)


def test_onnx_matches_pytorch_at_sizes_bins_do_not_divide(tiny_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, path = tiny_onnx
    # 129 -> 17x17 features (not divisible by 2, 3 or 6); 97x160 -> 13x20; 64x64 -> 8x8 (example is 129).
    sizes = [(129, 129), (97, 160), (64, 64)]
    diffs = verify_onnx(model, path, sizes, batch=2)
    assert set(diffs) == set(sizes)
    assert max(diffs.values()) <= 1e-4, diffs


def test_max_pooling_model_exports_exactly(tmp_path: Path) -> None:
    model = create_model("pspnet_tiny", num_classes=4, pooling="max").eval()
    path = export_onnx(model, tmp_path / "max.onnx")
    assert max(verify_onnx(model, path, [(97, 129), (72, 72)]).values()) <= 1e-4


def test_onnx_model_carries_metadata_and_predicts_like_pytorch(
    tiny_onnx: tuple[torch.nn.Module, Path],
) -> None:
    model, path = tiny_onnx
    runner = OnnxModel(path)
    assert runner.num_classes == 21
    assert runner.preprocess == model.preprocess
    assert runner.dataset_info == VOC2012
    assert runner.config == model.config
    x = torch.randn(1, 3, 80, 100)
    with torch.no_grad():
        assert torch.allclose(runner(x)["out"], model(x)["out"], atol=1e-4, rtol=0)
    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    expected = predict_probs(model, image, mode="slide", crop_size=65)
    got = predict_probs(runner, image, mode="slide", crop_size=65)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_onnx_model_refuses_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="garbage.onnx"):
        OnnxModel(garbage)


def test_onnx_model_with_external_weights(tiny_onnx: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """A file re-saved with its weights beside it (as tools do for models over 2 GB) loads and
    predicts the same; without the weights file it is refused with an error naming the model."""
    import onnx

    model, path = tiny_onnx
    moved = tmp_path / "external" / "model.onnx"
    moved.parent.mkdir()
    proto = onnx.load(str(path))
    onnx.save(proto, str(moved), save_as_external_data=True, location="model.weights", size_threshold=0)
    assert (moved.parent / "model.weights").stat().st_size > moved.stat().st_size  # the weights moved out
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(OnnxModel(moved)(x)["out"], model(x)["out"], atol=1e-4, rtol=0)
    (moved.parent / "model.weights").unlink()
    with pytest.raises(InputError, match=r"model\.onnx: not a loadable ONNX model"):
        OnnxModel(moved)


def test_export_cli_prints_diffs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("pspnet_tiny", num_classes=3)
    weights = save_model(model, tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    code = main(["export", "--model", str(weights), "--out", str(out), "--verify-sizes", "97x129", "64x72"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file()
    assert "97x129: max abs diff" in printed and "64x72: max abs diff" in printed
    assert OnnxModel(out).num_classes == 3
    assert "replaced" not in printed
    assert main(["export", "--model", str(weights), "--out", str(out), "--verify-sizes"]) == 0
    assert "(replaced the old file)" in capsys.readouterr().out


def test_export_refuses_a_folder_as_out_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "exports").mkdir()
    code = main(
        ["export", "--model", str(tmp_path / "absent.safetensors"), "--out", str(tmp_path / "exports")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--out" in err and "is a folder" in err and "absent.safetensors" not in err


def test_int8_model_is_quantized_and_keeps_metadata(
    tiny_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    import onnx

    _, path = tiny_onnx
    calibration = [torch.randn(1, 3, 65, 65) for _ in range(2)]
    out = quantize_int8(path, tmp_path / "int8.onnx", calibration)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    runner = OnnxModel(out)
    assert runner.num_classes == 21
    assert runner(torch.randn(1, 3, 72, 88))["out"].shape == (1, 21, 72, 88)


def test_a_failed_export_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from pspnet.errors import StorageError

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")

    def half_written(module, args, f, **kwargs):  # what a full disk does half-way through
        Path(f).write_bytes(b"\x08\x07partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(StorageError, match="model.onnx"):
        export_onnx(create_model("pspnet_tiny", num_classes=3), target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("opset", [9, 10, 99])
def test_opsets_the_export_cannot_write_are_refused_in_one_line(
    opset: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = save_model(create_model("pspnet_tiny", num_classes=3), tmp_path / "m.safetensors")
    code = main(["export", "--model", str(weights), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "opset must be an integer from 11" in err[0] and f"got {opset}" in err[0]
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(InputError, match="opset"):
        export_onnx(create_model("pspnet_tiny", num_classes=3), tmp_path / "m.onnx", opset=opset)


def test_class_dimension_of_the_output_is_fixed(tiny_onnx: tuple[torch.nn.Module, Path]) -> None:
    import onnx

    dims = onnx.load(str(tiny_onnx[1])).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 21, "height", "width"]


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    model = create_model("pspnet_tiny", num_classes=4).eval()
    folder = tmp_path_factory.mktemp("static")
    save_model(model, folder / "m.safetensors")
    return model, export_onnx(model, folder / "static.onnx", dynamic=False, example_size=(65, 65))


def test_static_model_refuses_other_sizes_and_says_what_works(static_onnx, tmp_path: Path, capsys) -> None:
    model, path = static_onnx
    runner = OnnxModel(path)
    assert runner.fixed_shape == (1, 3, 65, 65)
    with pytest.raises(
        InputError, match=r"static\.onnx: static ONNX model .* takes only 1x3x65x65 .* got 1x3x61x83"
    ):
        runner(torch.randn(1, 3, 61, 83))
    image = np.random.default_rng(0).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"--mode slide --crop-size 65"):
        predict(path, image)
    # the fix it names works, flips and batches of windows included (run one image at a time)
    expected = predict_probs(model, image, mode="slide", crop_size=65, flip=True, batch_size=4)
    got = predict_probs(runner, image, mode="slide", crop_size=65, flip=True, batch_size=4)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # the CLI: one line naming the model and the fix, no traceback
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    code = main(
        [
            "predict",
            "--model",
            str(path),
            str(tmp_path / "img.png"),
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "takes only 1x3x65x65" in err


def test_static_export_says_which_sizes_it_verified(static_onnx, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = static_onnx
    weights = path.parent / "m.safetensors"
    out = path.parent / "again.onnx"
    args = ["export", "--model", str(weights), "--out", str(out), "--static", "--example-size", "65x65"]
    assert main([*args, "--verify-sizes", "97x129"]) == 0
    printed = capsys.readouterr().out
    assert "verifying 65x65 only" in printed and "65x65: max abs diff" in printed and "97x129:" not in printed


def test_predict_takes_an_onnx_path_like_the_cli(tiny_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, path = tiny_onnx
    image = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    from_path = predict(path, image, return_probs=True)
    direct = predict(model, image, return_probs=True)
    assert np.abs(from_path.probs - direct.probs).max() < 1e-4


def test_quantize_never_touches_a_file_named_like_its_temporary(
    tiny_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    """The pre-processed graph used to go to ``<out>.pre.onnx`` and be deleted: with the input
    named ``model.pre.onnx`` and the output ``model.onnx``, the input was lost."""
    _, path = tiny_onnx
    source = tmp_path / "model.pre.onnx"
    source.write_bytes(path.read_bytes())
    calibration = [torch.randn(3, 65, 65).numpy()]  # numpy arrays are accepted as tensors are
    out = quantize_int8(source, tmp_path / "model.onnx", calibration)
    assert source.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pre.onnx"]
    assert OnnxModel(out).num_classes == 21


def test_quantize_refuses_raw_images_with_the_fix(
    tiny_onnx: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    _, path = tiny_onnx
    raw = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(
        InputError, match=r"calibration image 1: .*uint8 array of shape \(64, 64, 3\).*preprocess\.to_tensor"
    ):
        quantize_int8(path, tmp_path / "q.onnx", [torch.randn(3, 64, 64), raw])
    with pytest.raises(InputError, match="is the input model itself"):
        quantize_int8(path, path, [torch.randn(3, 64, 64)])
    assert not (tmp_path / "q.onnx").exists()
