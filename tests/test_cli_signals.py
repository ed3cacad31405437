"""How the console script stops: SIGTERM like Ctrl-C (clean-up, then 143), a closed stdout quietly (141)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pspnet.commands.models
from pspnet import create_model
from pspnet.cli import main
from pspnet.io.checkpoint import save_model

REPO = Path(__file__).resolve().parents[1]
unix_only = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _signalled(signum: int, status: int | None, work_s: float = 10.0) -> object:
    """A command that receives ``signum`` while it works (and returns ``status`` if it survives)."""

    def run(args: object) -> int | None:
        os.kill(os.getpid(), signum)
        time.sleep(work_s)  # a handler that raises interrupts this at once
        return status

    return run


@unix_only
def test_sigterm_ends_a_command_like_ctrl_c_with_status_143(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    if before is not signal.SIG_DFL:
        pytest.skip("the test runner handles SIGTERM itself")
    cleaned: list[bool] = []

    def run(args: object) -> int:
        try:
            _signalled(signal.SIGTERM, 0)(args)
        finally:  # a `finally` clean-up runs, as on Ctrl-C, and a second SIGTERM does not cut it short
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            cleaned.append(True)
        return 0

    monkeypatch.setattr(pspnet.commands.models, "run", run)
    assert main(["models"]) == 143
    assert capsys.readouterr().err == "terminated\n"
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command

    monkeypatch.setattr(pspnet.commands.models, "run", _signalled(signal.SIGINT, 0))
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@unix_only
def test_a_sigterm_handler_someone_else_installed_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setattr(pspnet.commands.models, "run", _signalled(signal.SIGTERM, 5, work_s=0.1))
        assert main(["models"]) == 5
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@unix_only
def test_sigterm_during_predict_leaves_no_temporary_file_and_no_half_set(tmp_path: Path) -> None:
    """A real process, stopped as Slurm, Kubernetes or `timeout` stop it, at several moments."""
    torch.manual_seed(0)
    model = save_model(create_model("pspnet_tiny", num_classes=3).eval(), tmp_path / "tiny.safetensors")
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    stopped = 0
    for attempt, wait_for in enumerate((6, 45)):  # early, and some images in
        out = tmp_path / f"out{attempt}"
        command = [sys.executable, "-m", "pspnet.cli", "predict", str(folder), "--model", str(model)]
        process = subprocess.Popen(
            [*command, "--out", str(out), "--confidence", "--flip", "--no-progress", "--device", "cpu"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and len(os.listdir(out)) >= wait_for:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        if process.returncode == 0:  # finished before the signal: nothing to check this time
            continue
        stopped += 1
        assert process.returncode == 143, stderr
        assert stderr == "terminated\n" and stdout == ""
        names = os.listdir(out)
        assert not [name for name in names if name.endswith(".tmp")], names
        sets = Counter(name.split("_")[0].removesuffix(".png") for name in names)
        assert sets and set(sets.values()) == {3}, sets  # label PNG, overlay and confidence, or none
    assert stopped, "every run finished before SIGTERM; the machine is too fast for this test"


def test_closed_stdout_ends_quietly_with_status_141() -> None:
    """`pspnet models | head -1`: no "Broken pipe" error, no "Exception ignored" at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pspnet.cli", "models"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader goes away before the command writes
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr == ""


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. a DataLoader worker's pipe: a real failure, reported as one line."""

    def run(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(pspnet.commands.models, "run", run)
    assert main(["models"]) == 1
    assert capsys.readouterr().err == "pspnet models: error: [Errno 32] Broken pipe\n"
