"""Options shared by several commands (kept in one place so their help and checks agree)."""

from __future__ import annotations

import argparse

import torch

from pspnet.errors import InputError

__all__ = ["AMP_CHOICES", "add_amp_argument", "resolve_amp_argument"]

AMP_CHOICES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amp",
        choices=tuple(AMP_CHOICES),
        default="off",
        help="autocast the network in bf16/fp16 on a CUDA GPU (faster; probabilities stay float32); "
        "refused on CPU (default: off)",
    )


def resolve_amp_argument(amp: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``, refusing it off CUDA before any model or data is loaded."""
    dtype = AMP_CHOICES[amp]
    if dtype is not None and torch.device(device).type != "cuda":
        raise InputError(f"--amp {amp} needs a CUDA device (got --device {device}); leave --amp off on CPU")
    return dtype
