"""Output stride at inference (``with_output_stride``, ``--output-stride``) and the CPU-modes benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import create_model
from pspnet.cli import main
from pspnet.data.datasets import open_dataset
from pspnet.data.info import DatasetInfo, default_palette
from pspnet.data.preprocess import Preprocess
from pspnet.engine.evaluate import evaluate
from pspnet.errors import InputError
from pspnet.io.checkpoint import save_model
from pspnet.models.pspnet import PSPNet
from pspnet.models.registry import attach_metadata
from pspnet.models.stride import at_output_stride, with_output_stride
from pspnet.prediction import predict

REPO = Path(__file__).resolve().parents[1]
INFO = DatasetInfo("tiny4", ("a", "b", "c", "d"), default_palette(4), crop_size=64, base_size=64)


def _tiny(output_stride: int = 8, seed: int = 0) -> PSPNet:
    torch.manual_seed(seed)
    net = create_model("pspnet_tiny", num_classes=4, output_stride=output_stride).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # varied predictions, not one class everywhere
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    attach_metadata(net, "pspnet_tiny", INFO, Preprocess((120.0, 110.0, 100.0), (60.0, 55.0, 50.0)))
    return net


def _built_at(model: PSPNet, output_stride: int) -> PSPNet:
    """The independent route: construct at that stride from the config and load the state dict."""
    net = PSPNet(model.config.replace(output_stride=output_stride)).eval()
    net.load_state_dict(model.state_dict())
    return attach_metadata(net, model.preset_name, model.dataset_info, model.preprocess)


def test_with_output_stride_keeps_weights_and_metadata_and_leaves_the_original_alone() -> None:
    model = _tiny()
    converted = with_output_stride(model, 16)
    assert converted is not model and converted.config.output_stride == 16
    assert converted.config.replace(output_stride=8) == model.config
    assert (converted.preset_name, converted.dataset_info, converted.preprocess) == (
        "pspnet_tiny",
        INFO,
        model.preprocess,
    )
    original, new = model.state_dict(), converted.state_dict()
    assert original.keys() == new.keys()
    assert all(torch.equal(original[key], new[key]) for key in original)
    assert not converted.training
    with torch.no_grad():  # a copy: changing the new model's weights leaves the original's alone
        next(converted.parameters()).add_(1.0)
    assert model.config.output_stride == 8
    assert torch.equal(next(model.parameters()), original[next(iter(original))])


def test_output_stride_sets_the_resolution_of_the_last_stages() -> None:
    model = _tiny()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats8 = model.backbone(x)
        feats16 = with_output_stride(model, 16).backbone(x)
        feats32 = with_output_stride(model, 32).backbone(x)
    assert feats8["layer4"].shape[-2:] == (8, 12)  # 64/8 x 96/8
    assert feats16["layer3"].shape[-2:] == (4, 6) and feats16["layer4"].shape[-2:] == (4, 6)  # 1/16
    assert feats32["layer4"].shape[-2:] == (2, 3)  # 1/32
    assert torch.equal(feats16["layer2"], feats8["layer2"])  # the stages before layer3 are untouched


def test_converted_model_computes_what_a_model_built_at_that_stride_computes() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 65, 80)
    with torch.no_grad():
        got = with_output_stride(model, 16)(x)["out"]
        expected = _built_at(model, 16)(x)["out"]
        at8 = model(x)["out"]
    assert torch.equal(got, expected)
    assert not torch.allclose(got, at8)  # the stride really changed what is computed


def test_os8_to_os16_and_back_equals_the_original_exactly() -> None:
    model = _tiny()
    back = with_output_stride(with_output_stride(model, 16), 8)
    x = torch.randn(1, 3, 72, 72)
    with torch.no_grad():
        assert torch.equal(back(x)["out"], model(x)["out"])


def test_bad_strides_and_non_pspnet_models_are_refused() -> None:
    model = _tiny()
    with pytest.raises(InputError, match="output_stride must be one of"):
        with_output_stride(model, 12)
    with pytest.raises(InputError, match="ONNX"):
        with_output_stride(torch.nn.Conv2d(3, 4, 1), 16)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"model\.onnx: --output-stride needs a \.safetensors model"):
        at_output_stride(torch.nn.Conv2d(3, 4, 1), 16, "model.onnx")
    assert at_output_stride(model, 8) is model  # already there: no copy


# --- the CLI ----------------------------------------------------------------------------------------


def _folder_dataset(root: Path, count: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = rng.integers(0, 4, (48, 64)).astype(np.uint8)
        mask[:5] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_eval_and_predict_output_stride_flag_end_to_end(tmp_path: Path) -> None:
    model = _tiny()
    model_path = save_model(model, tmp_path / "tiny.safetensors")
    data = _folder_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    args = ["eval", "--model", str(model_path), "--data", str(data), "--kind", "folder"]
    assert main([*args, "--output-stride", "16", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["output_stride"] == 16
    dataset = open_dataset(data, "folder", "val", num_classes=4)
    expected = evaluate(_built_at(model, 16), dataset, progress=False)
    assert np.array_equal(np.array(report["confusion"]), expected.confusion)

    image = np.asarray(Image.open(data / "images" / "0.png").convert("RGB"))
    pred_out = tmp_path / "pred"
    args = ["predict", str(data / "images" / "0.png"), "--model", str(model_path), "--out", str(pred_out)]
    assert main([*args, "--output-stride", "16", "--no-overlay", "--no-progress", "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(pred_out / "0.png"))
    assert np.array_equal(labels, predict(_built_at(model, 16), image).labels)


def test_output_stride_flag_on_an_onnx_model_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    from pspnet.export import export_onnx

    onnx_path = export_onnx(_tiny(), tmp_path / "tiny.onnx", example_size=(64, 64))
    data = _folder_dataset(tmp_path / "data", count=1)
    args = ["eval", "--model", str(onnx_path), "--data", str(data), "--kind", "folder"]
    assert main([*args, "--output-stride", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(onnx_path) in err and "fixed when it is exported" in err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_help_calls_output_stride_a_speed_accuracy_trade(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--output-stride {8,16,32}" in text and "speed/accuracy trade" in text


# --- the benchmark script ---------------------------------------------------------------------------


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("cpu_modes_bench", REPO / "benchmarks" / "cpu_modes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


def test_cpu_modes_benchmark_runs_end_to_end_at_a_tiny_budget(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    bench = _load_benchmark()
    settings = bench.CpuModesSettings(
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        num_train=4,
        num_val=3,
        size=48,
        iterations=1,
        batch_size=2,
        speed_images=1,
        rounds=1,
        large_preset="pspnet_tiny",
        large_size=40,
        large_rounds=1,
        calibration_images=2,
        progress=False,
    )
    json_path = tmp_path / "report.json"
    report = bench.run_cpu_modes(settings, json_path)
    data = json.loads(json_path.read_text())
    names = [mode.name for mode in bench.MODES]
    assert [row["name"] for row in data["modes"]] == names
    assert [row["name"] for row in data["large"]] == names
    assert [row["name"] for row in data["int8"]] == ["torch_fp32", "onnx_fp32", "onnx_int8"]
    baseline = next(row for row in data["modes"] if row["name"] == bench.BASELINE)
    assert baseline["speed_ratio"] == 1.0 and baseline["agreement_with_baseline"] == 1.0
    assert data["int8"][0]["agreement_with_torch_fp32"] == 1.0  # torch fp32 against itself
    for row in data["modes"] + data["int8"]:
        assert 0.0 <= row["miou"] <= 1.0 and row["images_per_s"] > 0
    # less work per image where it should be: OS16 < OS8, flip doubles, a 0.75 scale shrinks the input
    flops = {row["name"]: row["gflops_per_image"] for row in data["modes"]}
    assert flops["os16"] < flops["os8"] and flops["scale0.75"] < flops["os8"]
    assert flops["paper"] == pytest.approx(2 * flops["os8"])
    assert (tmp_path / "out" / "pspnet_tiny_int8.onnx").is_file()
    assert "| `os16` |" in bench.format_report(report)
