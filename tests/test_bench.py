"""``run_benchmark`` / ``pspnet bench`` run end to end and report what they promise (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pspnet.bench import count_flops, run_benchmark
from pspnet.cli import main
from pspnet.errors import InputError

_VARIANT_FIELDS = {
    "name", "size", "batch", "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "images_per_s",
    "speedup_vs_eager", "gflops_per_image", "achieved_gflops", "peak_gflops", "peak_fraction",
    "peak_memory_mb", "max_abs_diff_vs_eager",
}  # fmt: skip


def test_flops_of_one_conv_match_hand_count() -> None:
    class OneConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.conv(x)}

    # 2 FLOPs per multiply-add, 8 outputs x 3 inputs x 9 taps per pixel, 10x12 pixels.
    assert count_flops(OneConv(), (10, 12)) == 2 * 8 * 3 * 9 * 10 * 12


def test_bench_writes_json_with_expected_fields(tmp_path: Path) -> None:
    variants = ["eager_fp32", "channels_last", "fold_bn", "bf16_cl"]
    out = tmp_path / "bench.json"
    report = run_benchmark(
        "pspnet_tiny", num_classes=5, sizes=[(64, 64)], batch=1, variants=variants, warmup=0, repeats=1,
        train=True, loader=True, loader_workers=0, json_path=out,
    )  # fmt: skip
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["preset"] == "pspnet_tiny"
    assert data["matmul_peak_gflops"]["fp32"] > 0
    names = [v["name"] for v in data["variants"]]
    assert names == ["eager_fp32", "channels_last", "fold_bn"]  # bf16_cl needs CUDA: skipped, noted
    assert any("bf16_cl" in note for note in data["notes"])
    for variant in data["variants"]:
        assert set(variant) >= _VARIANT_FIELDS
        assert variant["latency_ms_p10"] <= variant["latency_ms_median"] <= variant["latency_ms_p90"]
        assert variant["max_abs_diff_vs_eager"] <= 1e-4  # every variant computes the same logits
        assert variant["gflops_per_image"] == pytest.approx(data["variants"][0]["gflops_per_image"])
    assert data["variants"][0]["speedup_vs_eager"] == 1.0
    assert data["train"][0]["name"] == "train_fp32" and data["train"][0]["batch"] == 2
    assert data["loader"]["images_per_s"] > 0 and data["loader"]["stepwise_images_per_s"] > 0
    ratio = data["loader"]["images_per_s"] / data["loader"]["stepwise_images_per_s"]
    assert data["loader"]["speedup_vs_stepwise"] == pytest.approx(ratio)
    assert report.variants[0].gflops_per_image > 0


def test_bench_onnxruntime_variant(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    report = run_benchmark(
        "pspnet_tiny", num_classes=5, sizes=[(64, 80)], variants=["onnxruntime"], warmup=0, repeats=1
    )
    assert [v.name for v in report.variants] == ["eager_fp32", "onnxruntime"]
    assert report.variants[1].max_abs_diff_vs_eager <= 1e-4


def test_bench_cli_prints_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.json"
    code = main(
        ["bench", "--preset", "fcn_tiny", "--num-classes", "4", "--size", "64x64", "--variants", "fold_bn",
         "--warmup", "0", "--repeats", "1", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "eager_fp32" in printed and "fold_bn" in printed
    assert [v["name"] for v in json.loads(out.read_text())["variants"]] == ["eager_fp32", "fold_bn"]


def test_bench_rejects_unknown_variant() -> None:
    with pytest.raises(InputError, match="unknown variant"):
        run_benchmark("pspnet_tiny", sizes=[(64, 64)], variants=["warp_speed"], repeats=1)
