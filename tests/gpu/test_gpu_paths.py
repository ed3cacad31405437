"""CUDA-only paths: the bf16/fp16 fast paths and AMP training, against eager fp32 on the same GPU.

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/gpu``. Tolerances:
fp32 rewrites (channels-last, folded BN) within 1e-2 on logits because cuDNN may use TF32 for
convolutions; bf16 paths within 3e-2 relative L2 error of the logits and 98% argmax agreement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet import create_model
from pspnet.config import load_config
from pspnet.engine.inference import predict_probs
from pspnet.engine.train import train
from pspnet.fastpath import prepare_for_inference
from pspnet.io.checkpoint import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))


def _model() -> torch.nn.Module:
    """A tiny model with non-trivial BN statistics (so folding BN is really exercised)."""
    torch.manual_seed(0)
    model = create_model("pspnet_tiny", num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("options", "bf16"),
    [
        ({"channels_last": True, "fold_bn": False}, False),
        ({"fold_bn": True}, False),
        ({"channels_last": True, "amp_dtype": torch.bfloat16}, True),
        ({"channels_last": True, "weights_dtype": torch.bfloat16}, True),
        ({"channels_last": True, "amp_dtype": torch.float16}, True),
    ],
)
def test_fast_paths_match_eager_fp32(options: dict, bf16: bool) -> None:
    model = _model()
    x = torch.randn(4, 3, 96, 128)
    with torch.no_grad():
        reference = model.cuda()(x.cuda())["out"].float().cpu()
    out = prepare_for_inference(model, device="cuda", **options)(x).cpu()
    assert out.dtype == torch.float32 and out.shape == reference.shape
    if bf16:
        assert _relative_error(out, reference) < 3e-2
        assert (out.argmax(1) == reference.argmax(1)).float().mean() > 0.98
    else:
        torch.testing.assert_close(out, reference, atol=1e-2, rtol=1e-2)


def test_slide_prediction_on_gpu_matches_cpu() -> None:
    model = _model()
    image = np.random.default_rng(0).integers(0, 256, (150, 210, 3), dtype=np.uint8)
    cpu = predict_probs(model, image, mode="slide", crop_size=97, flip=True, device="cpu")
    gpu = predict_probs(model, image, mode="slide", crop_size=97, flip=True, device="cuda")
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_channels_last_training_runs_and_saves(tmp_path: Path, amp: str) -> None:
    from test_engine_train import TinyDataset, tiny_overrides

    overrides = tiny_overrides(
        tmp_path / amp,
        **{"device": "cuda", "optim.amp": amp, "optim.channels_last": True, "optim.iterations": 4},
        deterministic=False,
    )
    result = train(load_config(None, overrides), TinyDataset(n=8))
    assert len(result.history) == 4 and all(np.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 1.5
    weights = load_model(result.model_path).state_dict()
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_slide_prediction_agrees_with_fp32(dtype: torch.dtype) -> None:
    model = _model()
    image = np.random.default_rng(1).integers(0, 256, (150, 210, 3), dtype=np.uint8)
    fp32 = predict_probs(model, image, mode="slide", crop_size=97, flip=True, device="cuda")
    amp = predict_probs(model, image, mode="slide", crop_size=97, flip=True, device="cuda", amp_dtype=dtype)
    assert amp.dtype == torch.float32
    assert float((amp - fp32).abs().max()) < 5e-2
    assert (amp.argmax(0) == fp32.argmax(0)).float().mean() > 0.98
