"""Image normalisation as data, so a model carries the preprocessing its weights expect."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CAFFE_PREPROCESS", "IMAGENET_MEAN", "IMAGENET_STD", "PYTORCH_PREPROCESS", "Preprocess"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""RGB mean on the 0-255 scale (ImageNet), used by the authors' PyTorch release."""
IMAGENET_STD = (58.395, 57.12, 57.375)
"""RGB std on the 0-255 scale (ImageNet), used by the authors' PyTorch release."""

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocess:
    """How a 0-255 RGB image becomes the network's input tensor.

    Args:
        mean: per-channel mean in **RGB** order, 0-255 scale. Also the padding colour used by
            crops and sliding windows (the authors pad with the mean, i.e. zero after normalising).
        std: per-channel std in RGB order, or None for mean subtraction only (the Caffe models).
        channel_order: the order the network expects, ``"rgb"`` (PyTorch release) or ``"bgr"``
            (Caffe release).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        if self.std is not None:
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
            if any(v <= 0 for v in self.std):
                raise ValueError(f"std values must be positive, got {self.std}")
        if len(self.mean) != 3 or (self.std is not None and len(self.std) != 3):
            raise ValueError(f"mean and std need 3 values (RGB), got mean={self.mean} std={self.std}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")

    def normalize(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` or ``(3, H, W)`` float RGB in 0-255 -> network input (any device)."""
        if images.shape[-3] != 3:
            raise ValueError(f"expected 3 RGB channels, got shape {tuple(images.shape)}")
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        out = images - mean
        if self.std is not None:
            out = out / torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        if self.channel_order == "bgr":
            out = out.flip(-3)
        return out

    def to_tensor(self, image: np.ndarray) -> Tensor:
        """``(H, W, 3)`` RGB array (uint8 or float 0-255) -> normalised ``(3, H, W)`` float32."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return self.normalize(chw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        std = data.get("std")
        return cls(tuple(data["mean"]), None if std is None else tuple(std), data.get("channel_order", "rgb"))


PYTORCH_PREPROCESS = Preprocess()
"""The authors' PyTorch release (hszhao/semseg): RGB, ImageNet mean and std on 0-255."""
CAFFE_PREPROCESS = Preprocess(mean=(123.68, 116.779, 103.939), std=None, channel_order="bgr")
"""The authors' Caffe release: BGR, mean subtraction only (mean given here in RGB order)."""
