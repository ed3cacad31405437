"""Hostile files: pickles that would run code, YAML object tags, lying model metadata, escaping paths.

Every case is refused with a one-line error naming the file, and nothing in the file runs: the
pickle payloads would create a marker file, whose absence is checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from robustness_helpers import TinyScenes, train_overrides
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pspnet.cli import main
from pspnet.config import load_config
from pspnet.data.datasets import open_dataset
from pspnet.engine.train import train
from pspnet.errors import DataError, InputError, UnsafeFileError
from pspnet.io import checkpoint
from pspnet.io.checkpoint import load_model, save_model
from pspnet.models.registry import create_model


class _Payload:
    """Unpickling this runs ``touch MARKER``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "iteration": 2, "evil": _Payload(marker)}, path)
    return path


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """stderr lines, less ``pspnet train``'s informational ``config: PATH`` line."""
    err = capsys.readouterr().err.splitlines()
    return [line for line in err if line.strip() and not line.startswith("config: ")]


def test_a_planted_training_state_is_refused_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    train(load_config(None, train_overrides(out, **{"optim.iterations": 2})), TinyScenes(4))
    state = out / "checkpoints" / "iter_00000002" / "state.pt"
    marker = tmp_path / "executed"
    _evil_pickle(state, marker)
    with pytest.raises(UnsafeFileError, match=rf"{state}: refused: .*arbitrary code execution"):
        train(load_config(None, train_overrides(out, resume=True, **{"optim.iterations": 4})), TinyScenes(4))
    assert not marker.exists()


@pytest.mark.parametrize("key", ["model.init_weights", "model.backbone_weights"])
def test_a_pickled_weights_file_in_the_config_is_refused(key: str, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = _evil_pickle(tmp_path / "weights.pth", marker)
    sets = train_overrides(tmp_path / "run", **{key: str(evil)})
    with pytest.raises(UnsafeFileError, match=r"weights\.pth: refused"):
        train(load_config(None, sets), TinyScenes(4))
    assert not marker.exists()


def test_yaml_object_tags_are_refused_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "executed"
    config = tmp_path / "evil.yaml"
    config.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(InputError, match=rf"{config}: not valid YAML"):
        load_config(config)
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(None, [f'seed=!!python/object/apply:os.system ["touch {marker}"]'])
    assert main(["train", "--config", str(config)]) == 2
    errors = _err_lines(capsys)
    assert len(errors) == 1 and str(config) in errors[0]
    assert not marker.exists()


# ----------------------------------------------------------------------------- lying model files


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(
        create_model("pspnet_tiny", num_classes=3), tmp_path_factory.mktemp("m") / "good.safetensors"
    )


def _with_metadata(good: Path, path: Path, **changes: str) -> Path:
    with safe_open(str(good), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta.update(changes)
    save_file(load_file(str(good)), str(path), metadata=meta)
    return path


def _config(good: Path, **changes: object) -> str:
    with safe_open(str(good), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    return json.dumps({**config, **changes})


_LIARS = {
    "config not JSON": (lambda g: {"config": "{not json"}, "invalid pspnet metadata"),
    "config a list": (lambda g: {"config": "[1, 2]"}, "invalid pspnet metadata"),
    "config wrong type": (lambda g: {"config": _config(g, depth="deep")}, "invalid pspnet metadata"),
    "preprocess empty": (lambda g: {"preprocess": "{}"}, "invalid pspnet metadata"),
    "dataset junk": (lambda g: {"dataset": '{"name": 3}'}, "invalid pspnet metadata"),
    "other class count": (lambda g: {"config": _config(g, num_classes=5)}, "tensors do not match"),
    "10^8 classes": (lambda g: {"config": _config(g, num_classes=10**8)}, "tensors do not match"),
    "huge pyramid bin": (
        lambda g: {"config": _config(g, bins=[1, 2, 3, 100_000])},
        "exceed the limit of 256",
    ),
}


@pytest.mark.parametrize("case", list(_LIARS))
def test_lying_metadata_is_refused_before_building_the_model(
    case: str, good_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes, message = _LIARS[case]
    path = _with_metadata(good_file, tmp_path / "liar.safetensors", **changes(good_file))
    built_on: list[str] = []
    real = checkpoint.PSPNet

    def spy(config):  # type: ignore[no-untyped-def]
        built_on.append(torch.empty(0).device.type)  # the default device while the model is built
        return real(config)

    monkeypatch.setattr(checkpoint, "PSPNet", spy)
    with pytest.raises(InputError, match=rf"{path}: .*{message}"):
        load_model(path)
    assert set(built_on) <= {"meta"}  # never allocated for real (10^8 classes would need 25 GB)


def test_broken_model_files_through_the_cli(
    good_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = good_file.read_bytes()
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    files = {
        "zero": b"",
        "random": bytes(range(256)) * 4,
        "truncated": data[: len(data) // 2],
        "header only": data[:64],
    }
    for name, content in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(content)
        assert main(["predict", str(image), "--model", str(path), "--out", str(tmp_path / "o")]) == 2
        errors = _err_lines(capsys)
        assert len(errors) == 1 and f"{path}: not a readable safetensors file" in errors[0], errors
    liar = _with_metadata(
        good_file, tmp_path / "liar.safetensors", config=_config(good_file, num_classes=10**8)
    )
    assert main(["predict", str(image), "--model", str(liar), "--out", str(tmp_path / "o")]) == 2
    assert "tensors do not match" in _err_lines(capsys)[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- paths stay under the root


def test_voc_split_lists_cannot_leave_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("../../secret\n/../../../secret.jpg x\n")
    with pytest.raises(DataError) as info:
        open_dataset(root, "voc2012", "train")
    # only the id (stem) of a line is used: both lines look for JPEGImages/secret.jpg inside the root
    assert f"{root / 'JPEGImages' / 'secret.jpg'}: listed in train.txt but missing" in str(info.value)


@pytest.mark.parametrize(
    "line",
    ["../outside.png masks/a.png", "images/../../outside.png masks/a.png", "images/a.png ../../etc/x.png"],
)
def test_list_files_cannot_climb_out_of_the_data_root(line: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"")
    listing = root / "train.txt"
    listing.write_text(f"{line}\n")
    with pytest.raises(DataError, match=r"train\.txt:1: .* points outside the data root"):
        open_dataset(listing, "list", num_classes=3)


def test_a_symlink_inside_the_root_cannot_lead_a_relative_path_out(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "x.png").write_bytes(b"")
    (root / "link").symlink_to(tmp_path / "private")
    listing = root / "train.txt"
    listing.write_text("link/x.png link/x.png\n")
    with pytest.raises(DataError, match=r"train\.txt:1: 'link/x\.png' points outside the data root"):
        open_dataset(listing, "list", num_classes=3)
    listing.write_text(f"{tmp_path / 'private' / 'x.png'} {tmp_path / 'private' / 'x.png'}\n")
    assert [s.image for s in open_dataset(listing, "list", num_classes=3).samples] == [
        tmp_path / "private" / "x.png"
    ]  # the same file by an absolute path: a deliberate choice, accepted


# ------------------------------------------- stand-ins for third-party objects (read_release_file)


def _torch_file_with_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch.save zip archive whose ``data.pkl`` is hand-written (a pickler cannot write these)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            out.writestr(
                info.filename, data_pkl if info.filename.endswith("/data.pkl") else source.read(info)
            )
    return path


_CRAFTED = {
    # the stand-in for a third-party function, called, and its result called again as a function
    "call the result": b"\x80\x02cghost_mod_xyz\nFn\n)R)R.",
    # a stand-in next to os.system: the file names standard-library code, refused before unpickling
    "next to os.system": b"\x80\x02cghost_mod_xyz\nFn\n)Rcposix\nsystem\nX\x04\x00\x00\x00true\x85R.",
    # a stand-in used as the dict that would hold the tensors
    "as the container": b"\x80\x02cghost_mod_xyz\nFn\n)RX\x01\x00\x00\x00wK\x01s.",
}


@pytest.mark.parametrize("case", list(_CRAFTED))
def test_stand_ins_cannot_be_used_as_code_or_containers(case: str, tmp_path: Path) -> None:
    """The stand-ins of :func:`read_release_file` run nothing, and a pickle that would need them to
    be functions or containers is refused in one line, through ``pspnet convert`` too."""
    import sys

    from pspnet.io.checkpoint import read_release_file

    path = _torch_file_with_pickle(tmp_path / "crafted.pth", _CRAFTED[case])
    with pytest.raises(UnsafeFileError, match=r"crafted\.pth: refused") as err:
        read_release_file(path)
    assert "\n" not in str(err.value)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert "ghost_mod_xyz" not in sys.modules and not (tmp_path / "out.safetensors").exists()


def test_a_stand_in_is_inert_and_never_used_as_weights(tmp_path: Path) -> None:
    from pspnet.io.checkpoint import SkippedObject, read_release_file

    # Fn() then BUILD with a state: both ignored, the stand-in keeps nothing from the file
    built = b"\x80\x02}X\x01\x00\x00\x00wcghost_mod_xyz\nFn\n)R}X\x03\x00\x00\x00abcK\x01sbs."
    release = read_release_file(_torch_file_with_pickle(tmp_path / "built.pth", built))
    stand_in = release.content["w"]
    assert isinstance(stand_in, SkippedObject) and vars(stand_in) == {}
    assert release.skipped == ("ghost_mod_xyz.Fn",)
    with pytest.raises(InputError, match=r"built\.pth: entry 'w' is a pickled ghost_mod_xyz\.Fn object"):
        create_model("pspnet_tiny", num_classes=3, backbone_weights=tmp_path / "built.pth")
