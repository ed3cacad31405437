"""Checkpoints and exact resume: a killed run, resumed, ends with the same weights bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_engine_train import TinyDataset, read_metrics, tiny_overrides

from pspnet.config import load_config
from pspnet.engine.train import NonFiniteLossError, train
from pspnet.errors import InputError
from pspnet.io import train_state
from pspnet.io.train_state import capture_rng, list_checkpoints, restore_rng, save_checkpoint
from pspnet.models.registry import create_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# 16 images, batch 2: 8 iterations per epoch, so 12 iterations cross an epoch boundary and the
# checkpoint at 4 sits mid-epoch (the resume must skip the 8 images already consumed).
RUN = {"optim.iterations": 12, "output.checkpoint_interval": 4}


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_rng_states_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # leaves a cached gaussian in the legacy state
    state = capture_rng()
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(state)
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    full = train(load_config(None, tiny_overrides(tmp_path / "full", **RUN)), TinyDataset(16))
    out = tmp_path / "crashed"
    config = load_config(None, tiny_overrides(out, **RUN))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, TinyDataset(16, fail_after=2 * 6 + 1))  # dies inside iteration 7
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000004"
    resumed_data = TinyDataset(16)
    resumed = train(load_config(None, tiny_overrides(out, resume=True, **RUN)), resumed_data)
    assert resumed_data.loads == 2 * 8  # iterations 5..12 only: consumed images were skipped unread
    assert_same_weights(full.model_path, resumed.model_path)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # iterations 5 and 6, logged before the crash and trained again, are logged once
    assert [e["iter"] for e in lines if "loss" in e] == list(range(1, 13))
    times = [e["time"] for e in lines if "loss" in e]
    assert times == sorted(times)  # the resumed part goes on from the checkpoint's time


def test_resume_past_the_end_of_a_shorter_epoch_starts_the_next_one(tmp_path):
    """A checkpoint 6 steps into an epoch, resumed where epochs are 4 steps long (another number of
    ranks, or a smaller split): the run goes on from the next epoch instead of failing."""
    settings = {"optim.iterations": 8, "output.checkpoint_interval": 6}
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(16, fail_after=2 * 6 + 1))
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000006"
    train(load_config(None, tiny_overrides(out, resume=True, **settings)), TinyDataset(8))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e["iter"], e["epoch"]) for e in lines if "loss" in e][-2:] == [(7, 1), (8, 1)]


def test_resume_refuses_a_changed_config(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(out, **{"optim.iterations": 2})), TinyDataset(8))
    changed = tiny_overrides(out, resume=True, **{"optim.iterations": 2, "optim.momentum": 0.5})
    with pytest.raises(InputError, match=r"optim\.momentum: checkpoint 0\.9 vs now 0\.5"):
        train(load_config(None, changed), TinyDataset(8))
    other_model = tiny_overrides(out, resume=True, **{"optim.iterations": 2, "model.preset": "fcn_tiny"})
    with pytest.raises(InputError, match=r"model\.preset: checkpoint 'pspnet_tiny' vs now 'fcn_tiny'"):
        train(load_config(None, other_model), TinyDataset(8))


def test_resume_compares_the_ignore_index_in_effect(tmp_path):
    """data.ignore_index null means the dataset's (255): a run started with 255 spelled out (as
    checkpoints of earlier versions, whose default it was) resumes with null, and the reverse."""
    out = tmp_path / "run"
    settings = {"optim.iterations": 4, "output.checkpoint_interval": 2, "data.ignore_index": 255}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(8, fail_after=2 * 2 + 1))
    settings["data.ignore_index"] = None
    assert (
        train(load_config(None, tiny_overrides(out, resume=True, **settings)), TinyDataset(8)).iterations == 4
    )


def test_resume_may_change_the_base_lr(tmp_path, capsys):
    """The way out of a diverged run: resume with a lower base_lr; the poly schedule goes on at it."""
    out = tmp_path / "run"
    settings = {"optim.iterations": 4, "output.checkpoint_interval": 2}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(8, fail_after=2 * 2 + 1))
    train(
        load_config(None, tiny_overrides(out, resume=True, **settings, **{"optim.base_lr": 0.002})),
        TinyDataset(8),
    )
    assert "optim.base_lr changed from 0.01 to 0.002" in capsys.readouterr().err
    lrs = {e["iter"]: e["lr"] for e in read_metrics(out) if "lr" in e}
    assert lrs[2] == pytest.approx(0.01 * (1 - 1 / 4) ** 0.9)
    assert lrs[3] == pytest.approx(0.002 * (1 - 2 / 4) ** 0.9)
    assert lrs[4] == pytest.approx(0.002 * (1 - 3 / 4) ** 0.9)


def _diverge(out: Path, settings: dict, **extra) -> str:
    """Train at lr 200 (the weights become NaN within a few steps); the stop message."""
    config = load_config(None, tiny_overrides(out, **settings, **{"optim.base_lr": 200.0}, **extra))
    with pytest.raises(NonFiniteLossError, match="NaN/inf") as info:
        train(config, TinyDataset(8))
    message = str(info.value)
    assert int(message.split()[1].rstrip(":")) < 20  # at once, not at the next (final) checkpoint
    assert "--resume" in message and "lower optim.base_lr" in message
    return message


def _finish(out: Path, settings: dict) -> None:
    result = train(load_config(None, tiny_overrides(out, resume=True, **settings)), TinyDataset(8))
    state = load_file(str(result.model_path))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert [e["iter"] for e in read_metrics(out) if "loss" in e] == list(range(1, 21))


def test_diverged_weights_stop_at_once_and_the_advice_works(tmp_path):
    """With nonfinite: skip, NaN weights stop the run at the first such step (not at the next
    checkpoint); the advice, --resume with a lower base_lr, is accepted."""
    out = tmp_path / "run"
    settings = {"optim.iterations": 20, "output.checkpoint_interval": 100}
    with pytest.raises(RuntimeError, match="simulated crash"):  # a good checkpoint at 2
        train(
            load_config(None, tiny_overrides(out, **{**settings, "output.checkpoint_interval": 2})),
            TinyDataset(8, fail_after=2 * 2 + 1),
        )
    message = _diverge(out, settings, resume=True)
    assert f"--resume (it continues from {out / 'checkpoints' / 'iter_00000002'})" in message
    _finish(out, settings)


def test_diverged_before_any_checkpoint_the_advice_does_not_name_one(tmp_path):
    out = tmp_path / "run"
    settings = {"optim.iterations": 20, "output.checkpoint_interval": 100}
    message = _diverge(out, settings)
    assert "No checkpoint was written before it diverged" in message and "/last" not in message
    _finish(out, settings)


def test_state_file_needs_no_unpickling(tmp_path):
    train(load_config(None, tiny_overrides(tmp_path, **{"optim.iterations": 2})), TinyDataset(8))
    state = torch.load(tmp_path / "checkpoints" / "iter_00000002" / "state.pt", weights_only=True)
    assert state["iteration"] == 2 and state["optimizer"]["param_groups"][1]["lr_mult"] == 10.0


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = create_model("pspnet_tiny", num_classes=3)
    save_checkpoint(tmp_path, model, {"iteration": 1}, "seed: 0\n", iteration=1)
    # A kill during a write leaves a hidden temporary folder; the next save removes it.
    (tmp_path / "checkpoints" / ".tmp-iter_00000002-123").mkdir()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(train_state, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, {"iteration": 2}, "seed: 0\n", iteration=2)
    assert (tmp_path / "last").read_text().strip() == "checkpoints/iter_00000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00000001"]
    tensors, state = train_state.load_checkpoint(train_state.find_last_checkpoint(tmp_path))
    assert state == {"iteration": 1} and tensors.keys() == model.state_dict().keys()


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = create_model("pspnet_tiny", num_classes=3)
    for it in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, {"iteration": it}, "", iteration=it, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_00000003", "iter_00000004"]


_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from test_engine_train import TinyDataset
from pspnet.config import load_config
from pspnet.engine.train import train
train(load_config(None, json.loads(sys.argv[1])), TinyDataset(16, delay=float(sys.argv[2])))
"""


def _run(script: Path, overrides: list[str], delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(overrides), str(delay)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    script = tmp_path / "run_train.py"
    script.write_text(_SCRIPT.format(here=str(HERE)))
    full = _run(script, tiny_overrides(tmp_path / "full", **RUN), 0.0)
    out = tmp_path / "killed"
    victim = _run(script, tiny_overrides(out, **RUN), 0.1)  # ~0.2 s per iteration
    deadline = time.monotonic() + 120
    while not (out / "last").exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # it really died before the end
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()
    assert (out / ".lock").exists()  # the killed run could not remove its lock
    resumed = _run(script, tiny_overrides(out, resume=True, **RUN), 0.0)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    note = f"note: {out / '.lock'} was left by pid {victim.pid} on {socket.gethostname()}, which is gone"
    assert note in resumed.stderr.read().decode()  # stale: taken over
    assert not (out / ".lock").exists()
    assert_same_weights(tmp_path / "full" / "model.safetensors", out / "model.safetensors")
