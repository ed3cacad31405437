"""The matmul forms of bilinear resizing and average pooling (used on CUDA) against PyTorch's ops.

Run here on the CPU: the functions are device-agnostic, and the CPU stock ops are the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet.models.ops import (
    average_pyramid,
    average_pyramid_matmul,
    interpolation_matrix,
    pooling_matrix,
    resize_bilinear,
    resize_bilinear_matmul,
)


@settings(max_examples=40, deadline=None)
@given(
    in_h=st.integers(1, 23),
    in_w=st.integers(1, 23),
    out_h=st.integers(1, 97),
    out_w=st.integers(1, 97),
    align_corners=st.booleans(),
)
def test_resize_matmul_equals_interpolate(
    in_h: int, in_w: int, out_h: int, out_w: int, align_corners: bool
) -> None:
    x = torch.randn(2, 3, in_h, in_w, generator=torch.Generator().manual_seed(in_h * 100 + in_w))
    expected = F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(
        resize_bilinear_matmul(x, (out_h, out_w), align_corners), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_matmul_gradient_equals_interpolate_backward(align_corners: bool) -> None:
    x = torch.randn(2, 5, 12, 9, requires_grad=True)
    grad = torch.randn(2, 5, 89, 65)
    (a,) = torch.autograd.grad(
        F.interpolate(x, (89, 65), mode="bilinear", align_corners=align_corners), x, grad
    )
    (b,) = torch.autograd.grad(resize_bilinear_matmul(x, (89, 65), align_corners), x, grad)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)


def test_interpolation_rows_are_convex_weights_on_neighbours() -> None:
    m = interpolation_matrix(713, 90, True, torch.device("cpu"))
    torch.testing.assert_close(m.sum(1), torch.ones(713))
    assert int((m > 0).sum(1).max()) <= 2 and m[0, 0] == 1 and m[-1, -1] == 1  # corners aligned


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), bins=st.lists(st.integers(1, 8), min_size=1, max_size=4))
def test_pyramid_matmul_equals_adaptive_avg_pool(h: int, w: int, bins: list[int]) -> None:
    x = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(h * 41 + w))
    for got, b in zip(average_pyramid_matmul(x, bins), bins, strict=True):
        torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, b), atol=1e-5, rtol=0)


def test_pooling_windows_overlap_like_adaptive_pooling() -> None:
    m = pooling_matrix(3, 7, torch.device("cpu"))  # windows [0,3), [2,5), [4,7)
    assert (m > 0).tolist() == [
        [True, True, True, False, False, False, False],
        [False, False, True, True, True, False, False],
        [False, False, False, False, True, True, True],
    ]


def test_layout_and_dtype_follow_the_input() -> None:
    x = torch.randn(2, 8, 12, 12).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    up = resize_bilinear_matmul(x, (30, 30), True)
    pooled = average_pyramid_matmul(x, (1, 2, 3, 6))
    assert up.dtype == torch.bfloat16 and up.is_contiguous(memory_format=torch.channels_last)
    assert all(t.dtype == torch.bfloat16 for t in pooled)  # tiny grids: views of one channels-last result
    reference = F.interpolate(x.float(), (30, 30), mode="bilinear", align_corners=True)
    assert float((up.float() - reference).abs().max()) < 0.02 * float(reference.abs().max())


def test_cpu_dispatch_keeps_the_stock_ops_bit_identical() -> None:
    x = torch.randn(1, 6, 11, 13)
    assert torch.equal(
        resize_bilinear(x, (41, 50), True), F.interpolate(x, (41, 50), mode="bilinear", align_corners=True)
    )
    for got, b in zip(average_pyramid(x, (1, 2, 3, 6)), (1, 2, 3, 6), strict=True):
        assert torch.equal(got, F.adaptive_avg_pool2d(x, b))
