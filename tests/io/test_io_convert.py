"""Converter behaviour beyond the golden equivalence: presets, bad files, key mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pspnet import create_model
from pspnet.errors import InputError
from pspnet.io.checkpoint import load_model, save_model
from pspnet.io.convert import SEMSEG_PREFIXES, convert_checkpoint


def test_every_authors_key_maps_onto_a_model_key() -> None:
    with torch.device("meta"):
        model = create_model("pspnet50", num_classes=150)
    ours = set(model.state_dict())
    for key in ours:
        assert any(key.startswith(o) for _, o in SEMSEG_PREFIXES), key


def test_preset_gives_label_space_and_is_checked(tmp_path: Path) -> None:
    src = tmp_path / "ade.pth"
    with torch.device("meta"):
        meta_model = create_model("pspnet50_ade20k")
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta_model.state_dict().items()}
    inverse = [(ours, theirs) for theirs, ours in SEMSEG_PREFIXES]
    authors = {}
    for key, value in state.items():
        for ours, theirs in inverse:
            if key.startswith(ours):
                authors["module." + theirs + key[len(ours) :]] = value
    torch.save({"state_dict": authors}, src)
    result = convert_checkpoint(src, tmp_path / "ade.safetensors", preset="pspnet50_ade20k")
    assert result.report.complete
    loaded = load_model(tmp_path / "ade.safetensors")
    assert loaded.dataset_info is not None and loaded.dataset_info.name == "ade20k"
    with pytest.raises(InputError, match=r"do not fit preset 'pspnet101_voc2012'") as err:
        convert_checkpoint(src, None, preset="pspnet101_voc2012")
    assert "'depth': (50, 101)" in str(err.value) and "'num_classes': (150, 21)" in str(err.value)


def test_non_semseg_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "tv.pth")
    with pytest.raises(InputError, match="cannot tell which release"):
        convert_checkpoint(tmp_path / "tv.pth", None)
    with pytest.raises(InputError, match="no 'cls.4.weight'"):
        convert_checkpoint(tmp_path / "tv.pth", None, source="semseg")
    torch.save(
        {"state_dict": {"cls.4.weight": torch.zeros(2, 3, 1, 1), "foo.bar": torch.zeros(1)}},
        tmp_path / "odd.pth",
    )
    with pytest.raises(InputError, match="layer3 has 0 blocks"):
        convert_checkpoint(tmp_path / "odd.pth", None)


# --- released files as found in the wild: bookkeeping objects, damaged files, wrong names ------------

SMALL_PSPNET50 = {"stem_width": 8, "widths": (4, 8, 16, 32), "head_channels": 16, "aux_channels": 8}


def _authors_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under the authors' key names, as DataParallel saved it (``module.`` prefix)."""
    inverse = [(ours, theirs) for theirs, ours in SEMSEG_PREFIXES]
    out = {}
    for key, value in model.state_dict().items():
        ours, theirs = next((o, t) for o, t in inverse if key.startswith(o))
        out["module." + theirs + key[len(ours) :]] = value.clone()
    return out


def _small_source() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("pspnet50", num_classes=5, **SMALL_PSPNET50)
    for module in model.modules():  # random BN statistics, so a mis-mapped tensor changes the logits
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


_TRAINER = '''
import pathlib
pathlib.Path({imported!r}).touch()


class History:
    """What mmengine's HistoryBuffer is to a checkpoint: bookkeeping with its own code."""

    def __init__(self):
        self.values = [1.0, 0.5]

    def __setstate__(self, state):
        pathlib.Path({ran!r}).touch()


def boom(marker):
    pathlib.Path(marker).touch()
'''


class _CallBoom:
    """Pickles as a call of ``trainer.boom(marker)``: a function of a third-party module."""

    def __init__(self, boom, marker: Path) -> None:
        self.boom, self.marker = boom, marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.boom, (str(self.marker),))


@pytest.fixture
def trainer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable third-party module whose import, ``__setstate__`` and ``boom`` each leave a marker.

    Yields (module, markers); the module is removed from ``sys.modules`` and the import marker
    deleted once the test has pickled its objects (``forget``), so any later import shows.
    """
    import importlib
    import sys

    markers = {name: tmp_path / f"{name}.marker" for name in ("imported", "ran", "called")}
    package = tmp_path / "site" / "trainer_xyz"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        _TRAINER.format(imported=str(markers["imported"]), ran=str(markers["ran"]))
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    module = importlib.import_module("trainer_xyz")

    def forget() -> None:
        sys.modules.pop("trainer_xyz", None)
        markers["imported"].unlink()

    yield module, markers, forget
    sys.modules.pop("trainer_xyz", None)


def test_bookkeeping_objects_of_other_libraries_are_skipped_without_running_them(
    tmp_path: Path, trainer_module, capsys: pytest.CaptureFixture[str]
) -> None:
    """An mmengine-style checkpoint (objects of a training library next to the weights) converts;
    the library is importable here, yet it is neither imported nor run, and the note names it."""
    import sys

    from pspnet.cli import main

    trainer, markers, forget = trainer_module
    source = _small_source()
    checkpoint = {
        "epoch": 100,
        "state_dict": _authors_checkpoint(source),
        "message_hub": {
            "log_scalars": {"loss": trainer.History()},
            "hook": _CallBoom(trainer.boom, markers["called"]),
        },
    }
    torch.save(checkpoint, tmp_path / "train_epoch_100.pth")
    forget()
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(tmp_path / "train_epoch_100.pth"), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "neither imported nor run" in printed and "trainer_xyz.History" in printed
    assert "trainer_xyz.boom" in printed and "epoch, message_hub" in printed
    assert not any(marker.exists() for marker in markers.values())
    assert "trainer_xyz" not in sys.modules
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(load_model(dst)(x)["out"], source(x)["out"])


def test_tensors_that_need_foreign_code_are_refused(tmp_path: Path, trainer_module) -> None:
    import sys
    import types

    from pspnet.errors import UnsafeFileError

    trainer, markers, forget = trainer_module
    state = _authors_checkpoint(_small_source())
    state["module.cls.4.bias"] = trainer.History()  # a tensor replaced by the library's object
    torch.save({"state_dict": state}, tmp_path / "object.pth")
    forget()
    with pytest.raises(
        InputError, match=r"object\.pth: entry 'module\.cls\.4\.bias' is a pickled trainer_xyz\.History"
    ):
        convert_checkpoint(tmp_path / "object.pth", tmp_path / "object.safetensors")
    # a tensor subclass of a module that does not exist at load time: its tensors cannot be rebuilt
    ghost = types.ModuleType("ghost_tensors_xyz")
    ghost.GhostTensor = type("GhostTensor", (torch.Tensor,), {"__module__": "ghost_tensors_xyz"})
    sys.modules["ghost_tensors_xyz"] = ghost
    try:
        state = _authors_checkpoint(_small_source())
        state["module.cls.4.bias"] = state["module.cls.4.bias"].as_subclass(ghost.GhostTensor)
        torch.save({"state_dict": state}, tmp_path / "subclass.pth")
    finally:
        del sys.modules["ghost_tensors_xyz"]
    with pytest.raises(UnsafeFileError, match=r"subclass\.pth: refused: .*ghost_tensors_xyz\.GhostTensor"):
        convert_checkpoint(tmp_path / "subclass.pth", tmp_path / "subclass.safetensors")
    assert not any(marker.exists() for marker in markers.values())
    assert not list(tmp_path.glob("*.safetensors"))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_System, _Exec])
def test_code_next_to_valid_weights_is_refused_without_running(payload: type, tmp_path: Path) -> None:
    """Skipping applies to other libraries' bookkeeping, never to the standard library's code."""
    from pspnet.errors import UnsafeFileError

    marker = tmp_path / "executed"
    checkpoint = {"state_dict": _authors_checkpoint(_small_source()), "meta": {"hook": payload(marker)}}
    torch.save(checkpoint, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match=r"evil\.pth: refused: .*arbitrary code execution"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()


def test_numpy_scalars_in_meta_do_not_block_conversion(tmp_path: Path) -> None:
    import numpy as np

    source = _small_source()
    checkpoint = {
        "state_dict": _authors_checkpoint(source),
        "meta": {"seed": np.int64(5), "iter": np.float32(1)},
    }
    torch.save(checkpoint, tmp_path / "np.pth")
    result = convert_checkpoint(tmp_path / "np.pth", None)
    assert any("numpy" in note and "dtype" in note for note in result.notes)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(result.model(x)["out"], source(x)["out"])


def test_auto_detection_and_the_reader_share_one_read_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detecting the source and reading the weights used to load a release twice (four times for a
    file with bookkeeping objects: a strict read and a read with stand-ins, each twice)."""
    import numpy as np

    from pspnet.io import checkpoint

    source = _small_source()
    torch.save({"state_dict": _authors_checkpoint(source), "meta": {"seed": np.int64(5)}}, tmp_path / "r.pth")
    loads: list[str] = []
    real_load = checkpoint.torch.load
    monkeypatch.setattr(
        checkpoint.torch, "load", lambda f, *a, **k: (loads.append(str(f)), real_load(f, *a, **k))[1]
    )
    for _ in range(2):  # the shared read lasts one conversion: a second conversion reads the file again
        result = convert_checkpoint(tmp_path / "r.pth", None)
        assert result.source == "semseg"
    assert len(loads) == 4  # per conversion: one strict read, refused; one read with stand-ins
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(result.model(x)["out"], source(x)["out"])


def test_semseg_notes_say_what_was_assumed_and_dropped(tmp_path: Path) -> None:
    source = _small_source().half()
    torch.save({"epoch": 100, "state_dict": _authors_checkpoint(source), "optimizer": {}}, tmp_path / "a.pth")
    notes = "\n".join(convert_checkpoint(tmp_path / "a.pth", None).notes)
    assert "pyramid bins (1, 2, 3, 6)" in notes and "ImageNet mean/std" in notes
    assert "not imported (not part of the network): epoch, optimizer" in notes
    assert "torch.float16: upcast to float32" in notes


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r"not a readable PyTorch checkpoint \(empty file\)"),
        (b"hello\n", "not a PyTorch checkpoint"),
        (bytes(range(256)) * 8, "not a PyTorch checkpoint"),
        (b"\n\x04ade1\xa2\x06\x00" + bytes(20), "looks like a Caffe model.*--source caffe"),
    ],
)
def test_files_that_are_not_torch_checkpoints_get_one_line(
    content: bytes, expected: str, tmp_path: Path
) -> None:
    from pspnet.cli import main

    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    for source in ("auto", "semseg", "mmseg"):
        with pytest.raises(InputError, match=rf"weights\.pth: {expected}") as err:
            convert_checkpoint(path, None, source=source)
        assert "arbitrary code" not in str(err.value)
    assert main(["convert", str(path), str(tmp_path / "x.safetensors")]) == 2


def test_destination_must_be_a_new_safetensors_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.cli import main

    src = tmp_path / "train_epoch_100.pth"
    torch.save({"state_dict": _authors_checkpoint(_small_source())}, src)
    before = src.read_bytes()
    assert main(["convert", str(src), str(src)]) == 2
    assert "is the source checkpoint itself" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"x\.pth: .*\.safetensors suffix, e\.g\. .*x\.safetensors"):
        convert_checkpoint(src, tmp_path / "x.pth")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(InputError, match=r"dir\.safetensors: is a directory"):
        convert_checkpoint(src, tmp_path / "dir.safetensors")
    assert src.read_bytes() == before and not (tmp_path / "x.pth").exists()
    out = tmp_path / "out.safetensors"
    for replaced in (False, True):
        assert main(["convert", str(src), str(out)]) == 0
        assert ("(replaced the old file)" in capsys.readouterr().out) is replaced


def test_incomplete_files_and_backbones_are_refused_with_the_right_advice(tmp_path: Path) -> None:
    state = _authors_checkpoint(_small_source())
    missing = {k: v for k, v in state.items() if k != "module.layer2.0.bn2.running_var"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(
        InputError, match=r"missing\.pth: .*missing \['backbone\.layer2\.0\.bn2\.running_var'\]"
    ) as err:
        convert_checkpoint(tmp_path / "missing.pth", None)
    assert "allow_partial" not in str(err.value)  # no such option on the command line
    torch.save({"state_dict": {**state, "module.psa.0.weight": torch.zeros(1)}}, tmp_path / "psanet.pth")
    with pytest.raises(InputError, match=r"psanet\.pth: not an hszhao/semseg PSPNet state dict"):
        convert_checkpoint(tmp_path / "psanet.pth", None)
    # an ImageNet classifier (torchvision names) is a backbone for training, not a release to convert
    with torch.device("meta"):
        classic = create_model("pspnet50", num_classes=5, stem="classic", **SMALL_PSPNET50)
    backbone = {
        k[len("backbone.") :].replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): torch.zeros(v.shape)
        for k, v in classic.state_dict().items()
        if k.startswith("backbone.")
    }
    backbone["fc.weight"] = torch.zeros(1000, 128)
    torch.save(backbone, tmp_path / "resnet50.pth")
    with pytest.raises(
        InputError, match=r"resnet50\.pth: an ImageNet classification backbone.*backbone_weights"
    ):
        convert_checkpoint(tmp_path / "resnet50.pth", None)
    # the same backbone as timm ships it (model.safetensors), and a pspnet model given to convert
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in backbone.items()}, tmp_path / "model.safetensors")
    with pytest.raises(
        InputError, match=r"model\.safetensors: an ImageNet classification backbone.*backbone_weights"
    ):
        convert_checkpoint(tmp_path / "model.safetensors", None)
    save_model(create_model("pspnet_tiny", num_classes=3), tmp_path / "ours.safetensors")
    with pytest.raises(InputError, match=r"ours\.safetensors: already a pspnet model; nothing to convert"):
        convert_checkpoint(tmp_path / "ours.safetensors", None)
