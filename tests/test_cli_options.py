"""Shared command-line checks (``pspnet.commands._options``): each refuses a bad value in one line,
naming the option, before any model, data or work; and ``--threads``/``--json`` of the commands
that run for minutes (bench, demo, ablate, verify-dataset)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from pspnet.cli import main
from pspnet.commands._options import check_output_dir, check_output_file, resolve_device_argument
from pspnet.errors import InputError


def test_device_is_checked_like_train_and_bench() -> None:
    assert resolve_device_argument("cpu") == "cpu"
    assert resolve_device_argument(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match=r"^--device 'tpu' is not a device; use cpu, cuda or cuda:N$"):
        resolve_device_argument("tpu")
    with pytest.raises(InputError, match="only cpu, cuda"):
        resolve_device_argument("meta")


def test_cuda_device_is_refused_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="--device cuda requested but no CUDA device is available"):
        resolve_device_argument("cuda")


def test_onnx_models_refuse_a_gpu_their_runtime_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """OnnxModel runs on a GPU only through onnxruntime's CUDA provider; without it the run would
    silently happen on the CPU, so --device cuda is refused instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fake = types.SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    with pytest.raises(InputError, match="no CUDA execution provider"):
        resolve_device_argument("cuda", Path("m.onnx"))
    assert resolve_device_argument("cuda", Path("m.safetensors")) == "cuda"  # PyTorch models may
    assert resolve_device_argument("cpu", Path("m.onnx")) == "cpu"
    fake.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_device_argument("cuda", Path("m.onnx")) == "cuda"
    with pytest.raises(InputError, match="cuda:3"):  # and the index must exist
        resolve_device_argument("cuda:3")


def test_output_locations_are_checked_without_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    check_output_dir(tmp_path / "new" / "deeper", "--out")
    check_output_file(tmp_path / "new" / "report.json", "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    with pytest.raises(InputError, match=r"^--out .*afile: .*afile is a file, not a folder"):
        check_output_dir(tmp_path / "afile", "--out")
    with pytest.raises(InputError, match=r"^--json .*r\.json: .*afile is a file"):
        check_output_file(tmp_path / "afile" / "r.json", "--json")
    with pytest.raises(InputError, match=r"^--json .* is a folder; give a file name"):
        check_output_file(tmp_path, "--json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--threads", "-1"], "--threads must be >= 1, got -1"),
        (["demo", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["demo", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["demo", "--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["ablate", "--threads", "-1"], "--threads must be >= 1, got -1"),
        (["ablate", "--lr", "0"], "--lr must be > 0"),
        (
            ["bench", "--preset", "pspnet_tiny", "--size", "64x64", "--threads", "-2"],
            "--threads must be >= 1",
        ),
        (["bench", "--preset", "pspnet_tiny", "--device", "tpu"], "--device 'tpu' is not a device"),
    ],
)
def test_long_commands_refuse_bad_values_before_any_work(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    # tiny budgets, so that a regression fails in seconds rather than running the full command
    extra = ["--no-progress"]
    if argv[0] in ("demo", "ablate"):
        extra += [
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--size",
            "32",
            "--iterations",
            "1",
            "--batch-size",
            "2",
        ]
        extra += (
            ["--cache", str(tmp_path / "cache")] if argv[0] == "ablate" else ["--out", str(tmp_path / "out")]
        )
    else:
        extra += ["--warmup", "0", "--repeats", "1"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # no data generated, no folder made
    assert torch.get_num_threads() == threads


def test_json_outputs_are_checked_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.data.synthetic import make_demo_data

    (tmp_path / "afile").write_text("")
    bad_json = str(tmp_path / "afile" / "rows.json")
    ablate = ["ablate", "--variants", "fcn", "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main([*ablate, "--json", bad_json]) == 2
    assert "--json" in capsys.readouterr().err and not (tmp_path / "cache").exists()  # before the data

    bench = ["bench", "--preset", "pspnet_tiny", "--size", "64x64", "--warmup", "0", "--repeats", "1"]
    assert main([*bench, "--json", bad_json]) == 2
    assert "--json" in capsys.readouterr().err

    data = make_demo_data(tmp_path / "data", num_train=2, num_val=1, size=32, workers=0, progress=False)
    verify = ["verify-dataset", str(data), "--no-progress"]
    import pspnet.commands.verify_dataset as command

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("verified the data before checking --json")

    with monkeypatch.context() as patch:
        patch.setattr(command, "verify_dataset", never)
        assert main([*verify, "--json", bad_json]) == 2
        assert main([*verify, "--json", str(tmp_path)]) == 2  # a folder, not a file
    capsys.readouterr()
    assert main([*verify, "--json", str(tmp_path / "new" / "report.json")]) == 0  # missing folders made
    assert (tmp_path / "new" / "report.json").stat().st_size > 0


def test_bench_prints_one_progress_line_per_variant_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--preset", "fcn_tiny", "--num-classes", "4", "--size", "64x64", "--variants", "fold_bn"]
    assert main([*argv, "--warmup", "0", "--repeats", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["eager_fp32"] * 2 + ["fold_bn"] * 2
    assert "running" in lines[0] and "ms median" in lines[1]
    assert main([*argv, "--warmup", "0", "--repeats", "1", "--threads", "1", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
