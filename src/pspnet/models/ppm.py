"""Pyramid pooling module: the global context prior that is the paper's contribution."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pspnet.models.ops import average_pyramid, resize_bilinear

__all__ = ["POOLING_TYPES", "PyramidPooling"]

POOLING_TYPES = ("avg", "max")


class PyramidPooling(nn.Module):
    """Pool the feature map into ``bins x bins`` grids, project, upsample and concatenate.

    Each branch is ``Sequential(pool, 1x1 conv (no bias), BN, ReLU)`` so that its indices
    (``branches.i.1`` conv, ``branches.i.2`` BN) line up with the authors' ``ppm.features.i``.
    The output is ``[x, bin_1, bin_2, ...]`` along channels, in the order of ``bins``.

    Args:
        in_channels: channels of the backbone's last stage (2048 for ResNet-50).
        bins: grid sizes; the paper uses (1, 2, 3, 6).
        pooling: ``"avg"`` (paper's best) or ``"max"`` (Table 1 ablation).
        reduction: project each branch to ``in_channels / len(bins)`` (paper) or keep
            ``in_channels`` (the "no dimension reduction" ablation).
        align_corners: bilinear upsampling convention; the authors use True.
    """

    def __init__(
        self,
        in_channels: int,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        pooling: str = "avg",
        reduction: bool = True,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_TYPES:
            raise ValueError(f"pooling must be one of {POOLING_TYPES}, got {pooling!r}")
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"bins must be a non-empty sequence of positive integers, got {bins}")
        if reduction and in_channels % len(bins) != 0:
            raise ValueError(
                f"with dimension reduction the {len(bins)} bins {tuple(bins)} must divide the "
                f"{in_channels} feature channels; choose a bin count that divides {in_channels}"
            )
        self.bins = tuple(int(b) for b in bins)
        self.align_corners = align_corners
        branch_channels = in_channels // len(bins) if reduction else in_channels
        pool = nn.AdaptiveAvgPool2d if pooling == "avg" else nn.AdaptiveMaxPool2d
        self.branches = nn.ModuleList(
            nn.Sequential(
                pool(b),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def _pool(self, x: Tensor) -> list[Tensor]:
        """Each branch's pooled grid; on CUDA all average bins from one matmul pair (models/ops.py)."""
        pools = [branch[0] for branch in self.branches]
        if all(type(p) is nn.AdaptiveAvgPool2d for p in pools):
            return average_pyramid(x, self.bins)
        return [pool(x) for pool in pools]

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        for branch, y in zip(self.branches, self._pool(x), strict=True):
            for layer in list(branch)[1:]:  # 1x1 conv, BN, ReLU
                y = layer(y)
            outs.append(resize_bilinear(y, size, self.align_corners))
        return torch.cat(outs, 1)
