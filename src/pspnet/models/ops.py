"""Bilinear resizing and average pyramid pooling written as matrix products, used on CUDA.

Why: profiling a PSPNet-50 training step at 713x713 on an H100 (bf16 autocast, channels-last)
showed about a quarter of the GPU time in two cheap-looking ops: ``upsample_bilinear2d``, whose
backward scatters with atomic adds (16.8 ms forward + backward for 8x19 logits in bf16, 132 ms for
ADE20K's 150 classes), and ``adaptive_avg_pool2d`` on channels-last tensors (14 ms for the four
pyramid bins). Both are linear and separable: ``out = A_h @ x @ A_w^T`` with small interpolation
or averaging matrices, which GEMMs evaluate forward and backward in a fraction of that time
(docs/performance.md), in the input's dtype and memory layout (no copies).

The matrices reproduce PyTorch's own source-index arithmetic (``area_pixel_compute_source_index``
and the adaptive pooling windows), so results agree with ``F.interpolate`` /
``F.adaptive_avg_pool2d`` to float rounding (about 1e-7 on unit-scale inputs). On the CPU the stock
ops are kept: they are not a bottleneck there, and CPU results stay bit-identical to the authors'
model. In bf16 the matrices' weights are rounded to bf16 (relative error <= 2^-9, below the
rounding of the bf16 result itself). ONNX export (traced on the CPU) therefore sees the stock ops too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "average_pyramid",
    "average_pyramid_matmul",
    "interpolation_matrix",
    "pooling_matrix",
    "resize_bilinear",
    "resize_bilinear_matmul",
]


def interpolation_matrix(out_size: int, in_size: int, align_corners: bool, device: torch.device) -> Tensor:
    """``(out_size, in_size)`` float32 weights of 1-D linear interpolation, PyTorch's convention."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0.0)
    low = src.floor().clamp_(max=in_size - 1)
    frac = (src - low).unsqueeze(1)
    low_i = low.long().unsqueeze(1)
    high_i = (low_i + 1).clamp_(max=in_size - 1)
    matrix = torch.zeros(out_size, in_size, device=device, dtype=torch.float32)
    matrix.scatter_add_(1, low_i, 1.0 - frac)
    return matrix.scatter_add_(1, high_i, frac)


def pooling_matrix(bins: int, in_size: int, device: torch.device) -> Tensor:
    """``(bins, in_size)`` float32 weights of adaptive average pooling along one axis.

    Window ``i`` covers ``[floor(i * n / b), ceil((i + 1) * n / b))``, as ``adaptive_avg_pool2d``.
    """
    index = torch.arange(in_size, device=device).unsqueeze(0)
    i = torch.arange(bins, device=device).unsqueeze(1)
    start = (i * in_size) // bins
    end = -((-(i + 1) * in_size) // bins)
    inside = (index >= start) & (index < end)
    return inside.float() / (end - start).float()


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _separable(x: Tensor, m_h: Tensor, m_w: Tensor) -> Tensor:
    """``m_h @ x @ m_w^T`` over the two spatial axes, without copying ``x`` into another layout.

    A channels-last ``(N, C, H, W)`` tensor is a contiguous ``(N, H, W, C)`` array: the products
    run on that view and the result comes back channels-last; a contiguous one uses its last two
    axes directly. Computed in ``x``'s dtype with autocast off, so the result has the input's dtype
    (as ``F.interpolate``); half-precision GEMMs accumulate in float32.
    """
    m_h, m_w = m_h.to(x.dtype), m_w.to(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        if _channels_last(x):
            n, c, h, w = x.shape
            rows = torch.matmul(m_h, x.permute(0, 2, 3, 1).reshape(n, h, w * c))  # (N, I, W*C)
            out = torch.matmul(m_w, rows.reshape(n * m_h.shape[0], w, c))  # (N*I, J, C)
            return out.reshape(n, m_h.shape[0], m_w.shape[0], c).permute(0, 3, 1, 2)
        return torch.matmul(torch.matmul(m_h, x), m_w.t())


def resize_bilinear_matmul(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=...)`` as two matmuls."""
    a_h = interpolation_matrix(int(size[0]), x.shape[-2], align_corners, x.device)
    a_w = interpolation_matrix(int(size[1]), x.shape[-1], align_corners, x.device)
    return _separable(x, a_h, a_w)


def average_pyramid_matmul(x: Tensor, bins: Sequence[int]) -> list[Tensor]:
    """``[F.adaptive_avg_pool2d(x, b) for b in bins]`` from one pair of matmuls.

    The per-bin pooling matrices are stacked, so the feature map is read once for all bins; the
    wanted grids are the diagonal blocks of the ``(sum(bins), sum(bins))`` result.
    """
    p_h = torch.cat([pooling_matrix(b, x.shape[-2], x.device) for b in bins])
    p_w = torch.cat([pooling_matrix(b, x.shape[-1], x.device) for b in bins])
    pooled = _separable(x, p_h, p_w)
    outs, offset = [], 0
    for b in bins:
        outs.append(pooled[..., offset : offset + b, offset : offset + b])
        offset += b
    return outs


def _use_matmul(x: Tensor) -> bool:
    return x.is_cuda and not torch.onnx.is_in_onnx_export()


def resize_bilinear(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize: matmuls on CUDA (fast backward), ``F.interpolate`` elsewhere."""
    if _use_matmul(x):
        return resize_bilinear_matmul(x, size, align_corners)
    return F.interpolate(x, tuple(size), mode="bilinear", align_corners=align_corners)


def average_pyramid(x: Tensor, bins: Sequence[int]) -> list[Tensor]:
    """Adaptive average pooling to each of ``bins``: one matmul pair on CUDA, the stock op elsewhere."""
    if _use_matmul(x):
        return average_pyramid_matmul(x, bins)
    return [F.adaptive_avg_pool2d(x, b) for b in bins]
