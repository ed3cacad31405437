"""The GPU-oriented code paths of the engine (AMP choice, fp16 GradScaler, channels-last), run on CPU.

CI has no GPU, so the paths are exercised here on CPU: fp16 autocast on CPU is slow but computes,
which is enough to prove the scaler is wired in (scaled backward, unscale/step, state saved with the
checkpoint and restored on resume). The CUDA-only behaviour is in tests/gpu.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine_train import TinyDataset, tiny_overrides

import pspnet.engine.train as engine
from pspnet.config import load_config
from pspnet.errors import InputError
from pspnet.io.checkpoint import load_model
from pspnet.io.train_state import load_checkpoint


def test_amp_choice_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert engine.resolve_amp("auto", cpu) is None  # never autocast on CPU
    assert engine.resolve_amp("off", cuda) is None
    with pytest.raises(InputError, match="needs a CUDA device"):
        engine.resolve_amp("bf16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert engine.resolve_amp("auto", cuda) is torch.bfloat16
    assert engine.resolve_amp("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert engine.resolve_amp("auto", cuda) is torch.float16  # pre-Ampere GPUs: fp16 + GradScaler


def test_fp16_grad_scaler_path_saves_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "resolve_amp", lambda mode, device: torch.float16)
    run = {"optim.iterations": 3, "output.checkpoint_interval": 1}
    full = engine.train(load_config(None, tiny_overrides(tmp_path / "full", **run)), TinyDataset(n=8))
    _, full_state = load_checkpoint(tmp_path / "full" / "checkpoints" / "iter_00000003")
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies loading iteration 3's batch
        engine.train(load_config(None, tiny_overrides(out, **run)), TinyDataset(n=8, fail_after=4))
    _, saved = load_checkpoint(out / "checkpoints" / "iter_00000002")
    assert saved["scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint
    resumed = engine.train(load_config(None, tiny_overrides(out, resume=True, **run)), TinyDataset(n=8))
    _, resumed_state = load_checkpoint(out / "checkpoints" / "iter_00000003")
    # restored, not restarted: the loss scale and its growth counter continue where they were
    assert resumed_state["scaler"] == full_state["scaler"]
    a, b = load_model(full.model_path).state_dict(), load_model(resumed.model_path).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_channels_last_training_matches_contiguous(tmp_path: Path) -> None:
    # Two steps: kernels differ in summation order, and the tiny model's 10x head lr amplifies that
    # (2e-4 on stem weights after two steps, 2e-3 after three), so longer runs drift apart legitimately.
    runs = []
    for channels_last in (False, True):
        out = tmp_path / f"cl{int(channels_last)}"
        overrides = tiny_overrides(out, **{"optim.iterations": 2, "optim.channels_last": channels_last})
        runs.append(load_model(engine.train(load_config(None, overrides), TinyDataset(n=8)).model_path))
    for (key, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=key)


def test_compiled_training_keeps_key_names_matches_eager_and_resumes_uncompiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``optim.compile`` compiles the model in place; TorchDynamo's eager backend stands in for
    inductor here (no C++ compile on CI), so the numbers must equal the uncompiled run."""
    compiled: list[torch.nn.Module] = []
    original = torch.nn.Module.compile

    def compile_eager(self: torch.nn.Module, *args, **kwargs) -> None:
        compiled.append(self)
        original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eager)
    run = {"optim.iterations": 2, "output.checkpoint_interval": 1}
    plain = engine.train(load_config(None, tiny_overrides(tmp_path / "plain", **run)), TinyDataset(n=8))
    assert not compiled
    run_c = {**run, "optim.compile": True}
    fast = engine.train(load_config(None, tiny_overrides(tmp_path / "fast", **run_c)), TinyDataset(n=8))
    assert len(compiled) == 1
    a, b = load_model(plain.model_path).state_dict(), load_model(fast.model_path).state_dict()
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    # a finished compiled run resumes without compile: compile is not part of the run's fingerprint
    again = engine.train(
        load_config(None, [*tiny_overrides(tmp_path / "fast", **run), "resume=true"]), TinyDataset(n=8)
    )
    assert again.history == []
