"""Inference speed helpers: BatchNorm folding, channels-last, autocast and ``torch.compile``.

Why a separate module: the model definition stays the authors' network (trainable, convertible
from their checkpoints); everything here rewrites a *copy* of an eval-mode model into something
that computes the same logits with less work. ``pspnet bench`` measures each rewrite against the
eager fp32 model in the same run, so a rewrite that does not pay off on a machine is visible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pspnet.errors import InputError

if TYPE_CHECKING:
    from pspnet.data.info import DatasetInfo
    from pspnet.data.preprocess import Preprocess

__all__ = [
    "AMP_DTYPES",
    "CudaGraphModel",
    "InferenceRunner",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "prepare_for_inference",
]

AMP_DTYPES = (None, torch.bfloat16, torch.float16)


def _probe_input(model: nn.Module, size: int = 64) -> Tensor:
    """A small input for tracing which conv feeds which BN (channels from the first conv)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(1, channels, size, size, device=device, dtype=dtype)


def find_conv_bn_pairs(model: nn.Module, example: Tensor | None = None) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BN's input is exactly the conv's output tensor.

    Found by running one eval-mode forward with hooks rather than by module order, so only pairs
    the forward really chains are folded (a module that defines ``bn1`` before ``conv1`` or reuses
    a conv twice is handled correctly: a conv or BN called more than once is never folded).
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    keep_alive: list[Tensor] = []  # ids of dead tensors could be reused by new ones
    calls: dict[str, int] = {}
    fed_by: dict[str, str] = {}

    def conv_hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        produced[id(output)] = name
        keep_alive.append(output)

    def bn_pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        source = produced.get(id(inputs[0]))
        if source is not None:
            fed_by[name] = source

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(bn_pre_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example if example is not None else _probe_input(model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    feeds: dict[str, int] = {}
    for conv in fed_by.values():
        feeds[conv] = feeds.get(conv, 0) + 1
    return [
        (conv, bn)
        for bn, conv in fed_by.items()
        if calls.get(bn) == 1 and calls.get(conv) == 1 and feeds[conv] == 1
    ]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with each Conv2d -> BatchNorm2d pair merged into one conv.

    The BN's affine map ``gamma * (y - mean) / sqrt(var + eps) + beta`` is linear in the conv's
    output, so it becomes a per-channel scale of the conv weights plus a bias; the BN is replaced
    by ``nn.Identity``. Saves one full pass over every feature map at inference. The result is only
    valid in eval mode (running statistics are baked in); ``model`` itself is not modified.

    Args:
        model: any module built from Conv2d/BatchNorm2d (PSPNet, FCN).
        example: input for the tracing forward; default a 64x64 random image.
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in find_conv_bn_pairs(folded, example):
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        if (
            not isinstance(conv, nn.Conv2d)
            or not isinstance(bn, nn.BatchNorm2d)
            or not bn.track_running_stats
        ):
            continue
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, bn_name, nn.Identity())
    return folded


@dataclass
class InferenceRunner:
    """``runner(x) -> logits``: a prepared model plus the input handling it needs.

    Keeps the knobs (device, memory format, autocast dtype) next to the module so that callers
    (``pspnet bench``, prediction) cannot feed a channels-last model a contiguous input by mistake
    or forget autocast. Logits come back as float32.
    """

    module: Callable[[Tensor], dict[str, Tensor]]
    device: torch.device
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None
    input_dtype: torch.dtype | None = None

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device, dtype=self.input_dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    out = self.module(x)["out"]
            else:
                out = self.module(x)["out"]
        return out.float()


def prepare_for_inference(
    model: nn.Module,
    *,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
    fold_bn: bool = True,
    compile: bool = False,
    weights_dtype: torch.dtype | None = None,
) -> InferenceRunner:
    """Return a callable ``runner(x) -> logits`` (float32) that is fast on ``device``.

    Args:
        model: a PSPNet (or any module returning ``{"out": logits}``); not modified.
        device: where to run.
        channels_last: NHWC memory format (helps cuDNN tensor cores; about neutral on CPU).
        amp_dtype: ``torch.bfloat16`` or ``torch.float16`` autocast, CUDA only. CPU autocast is
            refused: on CPUs without native bf16 it is slower and changes the numbers.
        fold_bn: merge BatchNorm into the preceding convs (exact up to float rounding).
        compile: wrap in ``torch.compile`` (opt-in: the first calls compile, for tens of seconds).
        weights_dtype: cast the (folded) weights and the input to ``torch.bfloat16``/``float16``,
            CUDA only. Faster than autocast, which re-casts every weight on every call (307 vs 286
            images/s eager, 499 with compile, for PSPNet-50 at 512x1024 on an H100,
            docs/performance.md); BN folded into bf16 weights rounds a little more than autocast.

    Raises:
        InputError: ``amp_dtype``/``weights_dtype`` on a non-CUDA device, or an unsupported dtype.
    """
    device = torch.device(device)
    if amp_dtype not in AMP_DTYPES:
        raise InputError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype}")
    if amp_dtype is not None and device.type != "cuda":
        raise InputError(
            f"amp_dtype={amp_dtype} needs a CUDA device (got {device}); autocast is not used on CPU, "
            "where it is slower than fp32 without native bf16 support"
        )
    if weights_dtype not in AMP_DTYPES:
        raise InputError(f"weights_dtype must be None, torch.bfloat16 or torch.float16, got {weights_dtype}")
    if weights_dtype is not None and device.type != "cuda":
        raise InputError(f"weights_dtype={weights_dtype} needs a CUDA device (got {device}); use fp32 on CPU")
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    prepared = prepared.to(device, dtype=weights_dtype).eval()
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    module: Callable[[Tensor], dict[str, Tensor]] = prepared
    if compile:
        module = torch.compile(prepared)
    return InferenceRunner(module, device, channels_last, amp_dtype, weights_dtype)


class CudaGraphModel(nn.Module):
    """An eval-mode model whose CUDA forward is captured once per input shape and then replayed.

    Why: sliding-window evaluation feeds the network the same crop shape over and over; replaying
    a captured CUDA graph removes the per-kernel launch cost of the eager forward (hundreds of
    kernels per crop). Use it where :func:`pspnet.engine.inference.predict_probs` takes a model:
    ``preprocess``, ``dataset_info`` and ``num_classes`` are the wrapped model's.

    Each new ``(shape, dtype)`` is captured (after two warm-up calls on a side stream) into its own
    memory pool, up to ``max_graphs`` shapes; further shapes, CPU inputs and training mode run the
    eager model. Autocast runs inside the graph with its weight cache off, as capture requires. The
    wrapped model must not be moved or changed after a capture: the graph holds its weights'
    addresses. Outputs are cloned out of the graph's static buffers, so the next replay cannot
    overwrite a result the caller still holds.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        max_graphs: int = 4,
    ) -> None:
        super().__init__()
        if amp_dtype not in AMP_DTYPES:
            raise InputError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype}")
        self.model = model.eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.max_graphs = max_graphs
        self.eval()  # a wrapper in training mode would run eager: graphs are for inference only
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, dict[str, Tensor]]] = {}

    @property
    def preprocess(self) -> Preprocess:
        return self.model.preprocess

    @property
    def dataset_info(self) -> DatasetInfo | None:
        return getattr(self.model, "dataset_info", None)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def captured_shapes(self) -> list[tuple[int, ...]]:
        return [key[0] for key in self._graphs]

    def _eager(self, x: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            "cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None, cache_enabled=False
        ):
            return self.model(x)

    def _capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, dict[str, Tensor]]:
        static_in = torch.empty_like(x).copy_(x)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # cuDNN picks its algorithms and the allocator warms up outside the graph
                self._eager(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._eager(static_in)
        return graph, static_in, static_out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.training or not x.is_cuda or torch.is_grad_enabled():
            return self._eager(x) if x.is_cuda else self.model(x)
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self._eager(x)
            entry = self._graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return {name: value.clone() for name, value in static_out.items()}
