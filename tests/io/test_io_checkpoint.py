"""Model files: round trips, metadata, partial loads, and refusal of code-carrying pickles."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pspnet import create_model
from pspnet.cli import main
from pspnet.errors import InputError, UnsafeFileError
from pspnet.io.checkpoint import (
    from_pretrained,
    load_model,
    load_state_dict_into,
    read_torch_file,
    save_model,
    save_pretrained,
)


def _outputs_equal(a, b, size=(1, 3, 40, 56)) -> bool:
    x = torch.randn(*size)
    with torch.no_grad():
        return torch.equal(a.eval()(x)["out"], b.eval()(x)["out"])


def test_save_load_rebuilds_same_model_with_metadata(tmp_path: Path) -> None:
    model = create_model("pspnet_tiny", num_classes=5, bins=(1, 2), pooling="max").eval()
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    assert loaded.preset_name == "pspnet_tiny" and not loaded.training
    assert _outputs_equal(model, loaded)


def test_dataset_preset_metadata_survives(tmp_path: Path) -> None:
    model = create_model("pspnet_tiny", num_classes=3)
    from pspnet.data.info import DatasetInfo
    from pspnet.models.registry import attach_metadata

    info = DatasetInfo("toy", ("a", "b", "c"), ((1, 2, 3), (4, 5, 6), (7, 8, 9)), crop_size=65, base_size=80)
    attach_metadata(model, "pspnet_tiny", info, model.preprocess)
    save_pretrained(model, tmp_path / "dir")
    assert (tmp_path / "dir" / "config.json").is_file()
    loaded = from_pretrained(tmp_path / "dir")
    assert loaded.dataset_info == info
    assert _outputs_equal(model, loaded)


def test_foreign_safetensors_is_refused_with_hint(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="pspnet convert"):
        load_model(tmp_path / "x.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(InputError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")


def test_partial_load_is_refused_unless_allowed_and_reported_by_name() -> None:
    source = create_model("pspnet_tiny", num_classes=5)
    target = create_model("pspnet_tiny", num_classes=3)
    with pytest.raises(
        InputError, match=r"classifier\.4\.weight file \(5, 64, 1, 1\) vs model \(3, 64, 1, 1\)"
    ):
        load_state_dict_into(target, source.state_dict())
    report = load_state_dict_into(target, source.state_dict(), allow_partial=True)
    mismatched = {name for name, _, _ in report.mismatched}
    assert mismatched == {
        "classifier.4.weight",
        "classifier.4.bias",
        "aux_classifier.4.weight",
        "aux_classifier.4.bias",
    }
    assert torch.equal(target.backbone.stem[0].weight, source.backbone.stem[0].weight)  # backbone kept
    extra = {**source.state_dict(), "extra.weight": torch.zeros(1)}
    report = load_state_dict_into(create_model("pspnet_tiny", num_classes=5), extra, allow_partial=True)
    assert report.unexpected == ["extra.weight"] and not report.missing


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match="arbitrary code execution.*posix.system"):
        read_torch_file(tmp_path / "evil.pth")
    assert not marker.exists()
    # the CLI reports it in one line with status 2, and still runs nothing
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_plain_tensor_checkpoint_reads(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(read_torch_file(tmp_path / "ok.pth")["state_dict"]["w"], torch.ones(2))
    (tmp_path / "trunc.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(InputError, match="trunc.pth"):
        read_torch_file(tmp_path / "trunc.pth")


def test_refusal_names_the_object_without_torchs_allowlisting_advice(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Payload(tmp_path / "x")}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError) as err:
        read_torch_file(tmp_path / "evil.pth")
    message = str(err.value)
    assert "it pickles posix.system" in message and "add_safe_globals" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r"\(empty file\)"),
        (b"hello\n", "not a PyTorch checkpoint"),
        (b"\x80\x02}q\x00(X", "not a readable"),
    ],
)
def test_damaged_or_foreign_files_are_one_line_input_errors(
    content: bytes, expected: str, tmp_path: Path
) -> None:
    """Any bytes: never a raw KeyError/IndexError from the unpickler, never called unsafe."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"weights\.pth: .*{expected}") as err:
        read_torch_file(path)
    assert not isinstance(err.value, UnsafeFileError)
    with pytest.raises(InputError, match=rf"weights\.pth: .*{expected}"):
        create_model("pspnet_tiny", num_classes=3, backbone_weights=path)


def test_random_bytes_never_escape_as_raw_errors(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    for i in range(40):
        head = rng.choice([b"\x80\x02", b"PK\x03\x04", b""])
        path = tmp_path / f"junk{i}.pth"
        path.write_bytes(head + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        with pytest.raises(InputError, match=f"junk{i}.pth"):
            read_torch_file(path)


@pytest.mark.parametrize(
    ("name", "writer", "expected"),
    [
        ("train_epoch_100.pth", lambda p: torch.save({"state_dict": {}}, p), "a PyTorch checkpoint"),
        (
            "model.pth.tar",
            lambda p: torch.save({"a": 1}, p, _use_new_zipfile_serialization=False),
            "a PyTorch checkpoint",
        ),
        ("pspnet50.caffemodel", lambda p: p.write_bytes(b"\n\x04ade1\xa2\x06\x00"), "a Caffe model"),
    ],
)
def test_released_files_given_as_a_model_say_how_to_import_them(
    name: str, writer, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from pspnet import predict

    path = tmp_path / name
    writer(path)
    stem = name.split(".")[0]
    fix = f"pspnet convert {path} {tmp_path / stem}.safetensors"
    with pytest.raises(InputError, match=rf"{name}: {expected}.*import it first with '{re.escape(fix)}'"):
        load_model(path)
    with pytest.raises(InputError, match="pspnet convert"):
        predict(path, np.zeros((16, 16, 3), np.uint8))
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert fix in capsys.readouterr().err


def test_only_a_pspnet_is_saved_and_never_onto_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="save_model needs a pspnet PSPNet, got Conv2d"):
        save_model(torch.nn.Conv2d(3, 5, 1), tmp_path / "c.safetensors")
    model = create_model("pspnet_tiny", num_classes=3)
    with pytest.raises(InputError, match=r"got DataParallel; pass model\.module"):
        save_model(torch.nn.DataParallel(model), tmp_path / "c.safetensors")
    (tmp_path / "out").mkdir()
    with pytest.raises(
        InputError, match=r"out: is a directory; give a file name, e\.g\. .*out/model\.safetensors"
    ):
        save_model(model, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())


def test_from_pretrained_also_takes_the_model_file(tmp_path: Path) -> None:
    model = create_model("pspnet_tiny", num_classes=3)
    save_pretrained(model, tmp_path / "dir")
    assert _outputs_equal(model, from_pretrained(tmp_path / "dir" / "model.safetensors"))


def test_predict_refuses_a_plain_module_in_one_line() -> None:
    import numpy as np

    from pspnet import predict

    with pytest.raises(InputError, match="a Conv2d has no preprocess or num_classes"):
        predict(torch.nn.Conv2d(3, 5, 1), np.zeros((16, 16, 3), np.uint8))
