"""`pspnet demo` end to end at a minimal size, and the report builder on known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pspnet.cli import main
from pspnet.data.info import CONTEXT_DEMO
from pspnet.demo_report import ModelRun, context_confusion, write_report


@pytest.mark.slow
def test_demo_at_minimal_size_writes_every_report_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--num-train", "8", "--num-val", "4", "--size", "64"]
    assert main([*args, "--iterations", "3", "--batch-size", "4", "--no-progress", "--threads", "1"]) == 0
    for name in ("report.md", "results.json", "iou.png", "curves.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    for preset in ("fcn_tiny", "pspnet_tiny"):
        assert (out / f"{preset}.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["fcn"]["preset"] == "fcn_tiny" and results["pspnet"]["preset"] == "pspnet_tiny"
    assert len(results["pspnet"]["iou"]) == CONTEXT_DEMO.num_classes
    assert "| PSPNet |" in capsys.readouterr().out


def test_demo_rejects_batch_of_one(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--batch-size", "1"]) == 2
    assert not (tmp_path / "report.md").exists()


def test_context_confusion_counts_both_directions() -> None:
    conf = np.zeros((3, 3), dtype=int)
    conf[0, 0], conf[0, 1] = 6, 2  # class 0: 2 of 8 pixels called class 1
    conf[1, 1], conf[1, 0], conf[1, 2] = 7, 1, 2  # class 1: 1 of 10 called class 0
    assert context_confusion(conf, 0, 1) == pytest.approx(3 / 18)
    assert np.isnan(context_confusion(np.zeros((3, 3)), 0, 1))


def _run(label: str, iou: list[float], conf: np.ndarray) -> ModelRun:
    return ModelRun(
        label, label.lower(), iou, float(np.mean(iou)), 0.9, conf.tolist(), [{"iter": 1, "loss": 1.0}]
    )


def test_report_states_the_gap_and_highlights_context_classes(tmp_path: Path) -> None:
    n = CONTEXT_DEMO.num_classes
    ctx = [CONTEXT_DEMO.class_names.index(c) for c in CONTEXT_DEMO.context_classes]
    fcn_iou = [0.9] * n
    psp_iou = [0.9] * n
    for i in ctx:
        fcn_iou[i], psp_iou[i] = 0.5, 0.7
    conf = np.eye(n, dtype=int) * 10
    report = write_report(tmp_path, CONTEXT_DEMO, _run("FCN", fcn_iou, conf), _run("PSPNet", psp_iou, conf))
    text = report.read_text()
    # mean IoU over 8 classes: FCN (4*0.9+4*0.5)/8 = 0.70, PSPNet (4*0.9+4*0.7)/8 = 0.80
    assert "PSPNet scores +10.0 mIoU" in text
    assert "+20.0 IoU on the context-dependent classes" in text
    assert "boat (context)" in text and "sky (context)" not in text
