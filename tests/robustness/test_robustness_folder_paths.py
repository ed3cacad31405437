"""Folders given where a file is expected, and the small-image hint both kinds of users can follow.

``pspnet.predict(model, "shots")`` and ``open_model("runs/")`` named existing folders "not found";
the messages now say what the path is and what to give instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet.errors import DataError, InputError
from pspnet.io.checkpoint import load_model, open_model, save_model
from pspnet.models.registry import create_model
from pspnet.prediction import predict


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("pspnet_tiny", num_classes=3).eval()


def test_predict_on_a_folder_says_it_is_a_folder(model: torch.nn.Module, tmp_path: Path) -> None:
    (tmp_path / "shots").mkdir()
    with pytest.raises(
        DataError, match=r"shots: is a folder, not an image file \(pspnet predict on the command"
    ):
        predict(model, tmp_path / "shots")


def test_a_model_folder_is_an_input_error_naming_it(model: torch.nn.Module, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    save_model(model, runs / "model.safetensors")
    for opener in (open_model, load_model):
        with pytest.raises(InputError, match=rf"{runs}: is a folder.*\.safetensors"):
            opener(runs)
    with pytest.raises(InputError, match=r"runs: is a folder; give the \.safetensors or \.onnx model file"):
        predict(runs, np.zeros((16, 16, 3), np.uint8))
    onnx_folder = tmp_path / "m.onnx"
    onnx_folder.mkdir()
    with pytest.raises(InputError, match=r"m\.onnx: is a folder"):
        open_model(onnx_folder)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):  # truly absent: unchanged
        open_model(tmp_path / "missing.safetensors")


def test_small_image_hint_names_the_slide_mode_for_python_and_the_command_line(
    model: torch.nn.Module,
) -> None:
    with pytest.raises(InputError) as info:
        predict(model, np.zeros((7, 7, 3), np.uint8))
    assert "mode='slide' in Python, --mode slide on the command line" in str(info.value)
