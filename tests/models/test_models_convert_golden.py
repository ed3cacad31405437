"""Numerical equivalence with the authors' PyTorch PSPNet, through `pspnet convert`'s code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_recipe import golden_input, golden_state_dict
from safetensors import safe_open

from pspnet.cli import main
from pspnet.io.checkpoint import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOLERANCE = 1e-4


def _fixture(depth: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / f"semseg_pspnet{depth}_golden.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


@pytest.mark.parametrize("depth", [50, 101])
def test_converted_authors_weights_reproduce_authors_logits(depth: int, tmp_path: Path) -> None:
    expected, meta = _fixture(depth)
    keys = [(k, tuple(s)) for k, s in json.loads(meta["keys"])]
    seed = int(meta["seed"])
    authors_state = golden_state_dict(keys, seed)
    # Written exactly as the authors' train.py saves: DataParallel prefix, epoch and optimizer.
    checkpoint = {
        "epoch": 100,
        "state_dict": {f"module.{k}": v for k, v in authors_state.items()},
        "optimizer": {},
    }
    torch.save(checkpoint, tmp_path / "train_epoch_100.pth")

    assert main(["convert", str(tmp_path / "train_epoch_100.pth"), str(tmp_path / "m.safetensors")]) == 0
    model = load_model(tmp_path / "m.safetensors")
    assert model.config.depth == depth and model.num_classes == int(meta["num_classes"])

    x = golden_input(tuple(json.loads(meta["input_shape"])), seed)
    with torch.no_grad():
        out = model(x)["out"]
        aux = model.aux_classifier(model.backbone(x)["layer3"])
        aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=True)
    assert out.shape == expected["out"].shape
    assert (out - expected["out"]).abs().max().item() <= TOLERANCE
    assert (aux - expected["aux"]).abs().max().item() <= TOLERANCE
    # the fixture is not degenerate: logits vary across classes and pixels
    assert expected["out"].std().item() > 1.0
