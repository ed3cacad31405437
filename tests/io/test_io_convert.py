"""Converter behaviour beyond the golden equivalence: presets, bad files, key mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pspnet import create_model
from pspnet.errors import InputError
from pspnet.io.checkpoint import load_model
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
