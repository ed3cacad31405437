"""`pspnet ablate` runs the chosen Table 1 variants and prints them beside the paper's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pspnet.ablate import ABLATIONS
from pspnet.cli import main
from pspnet.models.registry import create_model


def test_every_variant_builds_the_model_the_paper_describes() -> None:
    by_name = {a.name: a for a in ABLATIONS}
    assert create_model("pspnet_tiny", **by_name["fcn"].overrides).ppm is None
    b1 = create_model("pspnet_tiny", **by_name["b1_max"].overrides).ppm
    assert b1.bins == (1,) and b1.out_channels == 2 * 64  # no reduction: branch keeps 64 channels
    dr = create_model("pspnet_tiny", **by_name["b1236_avg_dr"].overrides).ppm
    assert dr.bins == (1, 2, 3, 6) and dr.out_channels == 64 + 4 * 16
    assert by_name["fcn_aux0"].aux_weight == 0.0 and by_name["fcn"].aux_weight == 0.4


@pytest.mark.slow
def test_ablate_command_prints_table_with_paper_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ablate", "--variants", "fcn", "b1236_avg_dr", "--cache", str(tmp_path / "data"), "--size", "64"]
    args += ["--num-train", "8", "--num-val", "4", "--iterations", "2", "--batch-size", "4", "--threads", "1"]
    assert main([*args, "--no-progress", "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "37.23" in out and "41.68" in out  # the paper's FCN and B1236+avg+DR figures
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["fcn", "b1236_avg_dr"]
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)


def test_unknown_variant_is_a_one_line_error(tmp_path: Path) -> None:
    args = ["ablate", "--variants", "b9", "--cache", str(tmp_path), "--size", "64", "--num-train", "4"]
    assert main([*args, "--num-val", "2", "--no-progress"]) == 2
    assert not any(tmp_path.iterdir())  # refused before generating data
