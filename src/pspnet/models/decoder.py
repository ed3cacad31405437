"""Optional learned decoder: refine the 1/8 logits with a 1/4-resolution backbone feature.

The paper (and the authors' code) upsample the 1/8 logits 8x bilinearly, which rounds object
boundaries. ``decoder="refine"`` adds a residual correction computed at 1/4 resolution from the
logits and a projected ``layer1`` feature: ``out = up(logits) + up(correction)``. The correction's
last conv is initialised to zero, so a model with converted weights and a fresh decoder computes
exactly what the bilinear model computes until the decoder is trained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pspnet.models.ops import resize_bilinear

__all__ = ["DECODER_TYPES", "RefineDecoder"]

DECODER_TYPES = ("bilinear", "refine")


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RefineDecoder(nn.Module):
    """``correction_1/4 = refine([up2(logits_1/8), proj(layer1)])``, added by the model after upsampling.

    The correction is returned rather than added here because bilinear upsampling in two steps
    (1/8 -> 1/4 -> 1/1) is not the same function as in one: keeping the logits' path one-step
    makes the zero-initialised decoder an exact no-op.

    Args:
        num_classes: channels of the logits being refined.
        low_channels: channels of the 1/4-resolution feature (``layer1``: 256 for ResNet-50).
        low_proj: channels the low-level feature is projected to (48, as in DeepLabv3+, capped
            at ``low_channels`` for the tiny presets) so it does not swamp the logits.
        mid_channels: width of the two 3x3 refinement convs.
        align_corners: bilinear convention, the model's.
    """

    def __init__(
        self,
        num_classes: int,
        low_channels: int,
        low_proj: int = 48,
        mid_channels: int = 64,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        low_proj = min(low_proj, low_channels)
        self.align_corners = align_corners
        self.project = _conv_bn_relu(low_channels, low_proj, 1)
        self.refine = nn.Sequential(
            _conv_bn_relu(num_classes + low_proj, mid_channels, 3),
            _conv_bn_relu(mid_channels, mid_channels, 3),
            nn.Conv2d(mid_channels, num_classes, 1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, logits: Tensor, low: Tensor) -> Tensor:
        up = resize_bilinear(logits, low.shape[-2:], self.align_corners)
        return self.refine(torch.cat([up, self.project(low)], 1))
