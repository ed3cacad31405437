"""Deterministic weights and inputs for the golden equivalence test with the authors' model.

The fixture files in tests/fixtures/ were produced by running the authors' PSPNet (hszhao/semseg,
``model/pspnet.py``, fetched into a scratch directory, never committed) in eval mode with the
state dict made here, on the input made here. They store only the key names/shapes, this recipe's
seed and the authors' logits. The test rebuilds the same state dict, converts it through
``pspnet convert``'s code path and compares outputs.

Every tensor's values depend only on (seed, tensor name), so the recipe does not depend on the
order of keys, and BN statistics are positive and well-conditioned so logits stay O(1).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["golden_input", "golden_state_dict"]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _tensor(seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    rng = _rng(seed, name)
    if name.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.long)
    if name.endswith("running_var"):
        values = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("running_mean"):
        values = rng.uniform(-0.1, 0.1, shape)
    elif len(shape) == 4:  # conv weight: He-scaled so activations neither vanish nor explode
        fan_in = shape[1] * shape[2] * shape[3]
        values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        if name.endswith(".4.weight"):  # the classifiers: scale logits to O(1-10) so 1e-4 is strict
            values = values * 20.0
    elif name.endswith("bias"):
        values = rng.uniform(-0.1, 0.1, shape)
    else:  # BN weight; small on the last BN of residual branches keeps the sum bounded over 100 blocks
        high = 0.3 if ".bn3." in name or name.endswith("bn3.weight") else 1.0
        values = rng.uniform(0.2, high, shape)
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def golden_state_dict(
    keys_and_shapes: list[tuple[str, tuple[int, ...]]], seed: int
) -> dict[str, torch.Tensor]:
    """A state dict in the authors' key naming (no ``module.`` prefix)."""
    return {name: _tensor(seed, name, tuple(shape)) for name, shape in keys_and_shapes}


def golden_input(shape: tuple[int, int, int, int], seed: int) -> torch.Tensor:
    """A normalised-looking input batch (zero mean, unit variance)."""
    values = _rng(seed, "__input__").standard_normal(shape)
    return torch.from_numpy(np.asarray(values, dtype=np.float32))
