"""The other workloads: a training step, the training data loader, sliding-window evaluation."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pspnet.bench.measure import peak_memory_mb, quantile, reset_peak_memory, sync, time_calls
from pspnet.bench.results import LoaderResult, SlideResult, TrainResult

__all__ = ["bench_loader", "bench_slide", "bench_train", "write_png_pairs"]


def _train_modes(
    device: torch.device, compile_step: bool
) -> list[tuple[str, torch.dtype | None, bool, bool]]:
    """``(name, autocast dtype, channels_last, compiled)`` per training mode measured on ``device``."""
    modes = [("train_fp32", None, False, False)]
    if device.type == "cuda":
        modes.append(("train_bf16_cl", torch.bfloat16, True, False))
        if compile_step:
            modes.append(("train_bf16_cl_compile", torch.bfloat16, True, True))
    elif compile_step:
        modes.append(("train_fp32_compile", None, False, True))
    return modes


def bench_train(
    model: nn.Module,
    device: torch.device,
    size: tuple[int, int],
    batch: int,
    warmup: int,
    repeats: int,
    compile_step: bool = False,
) -> list[TrainResult]:
    """Images/s of one step of ``pspnet train``'s recipe: fp32, bf16 autocast + channels-last on CUDA.

    The step is the engine's (two-group SGD, cross-entropy + 0.4 x aux loss in float32), so the
    figures are what training gets. ``compile_step`` adds the same step with the model compiled
    (``optim.compile``); its compile time is in ``first_step_s``.
    """
    from pspnet.engine.optim import build_optimizer, segmentation_loss

    batch = max(batch, 2)  # BatchNorm on the 1x1 pyramid bin needs two samples in training
    generator = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(batch, 3, *size, generator=generator)
    target_cpu = torch.randint(0, model.num_classes, (batch, *size), generator=generator)
    results: list[TrainResult] = []
    for name, amp_dtype, channels_last, compiled in _train_modes(device, compile_step):
        net = copy.deepcopy(model).to(device).train()
        x, target = x_cpu.to(device), target_cpu.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = build_optimizer(net, 0.01)
        if compiled:
            net.compile()

        def step(
            net: nn.Module = net,
            x: Tensor = x,
            target: Tensor = target,
            optimizer: Any = optimizer,
            amp_dtype: torch.dtype | None = amp_dtype,
        ) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(x)
            loss, _, _ = segmentation_loss(outputs, target, aux_weight=0.4)
            loss.backward()
            optimizer.step()

        reset_peak_memory(device)
        times, first = time_calls(step, device, warmup, repeats)
        memory, _ = peak_memory_mb(device)
        median = statistics.median(times)
        baseline = results[0].step_ms_median / 1e3 if results else median
        results.append(
            TrainResult(
                name=name,
                size=size,
                batch=batch,
                step_ms_median=median * 1e3,
                step_ms_p10=quantile(times, 0.1) * 1e3,
                step_ms_p90=quantile(times, 0.9) * 1e3,
                images_per_s=batch / median,
                speedup_vs_fp32=baseline / median,
                peak_memory_mb=memory,
                first_step_s=first,
            )
        )
        del net, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def write_png_pairs(root: Path, count: int, size: tuple[int, int], num_classes: int) -> None:
    """``root/images/*.png`` + ``root/masks/*.png``: smooth images (photo-like to decode, unlike
    noise, which PNG cannot compress) and blocky label maps, seeded."""
    import cv2

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    coarse_hw = (max(size[0] // 16, 2), max(size[1] // 16, 2))
    for i in range(count):
        coarse = rng.integers(0, 256, (*coarse_hw, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        labels = rng.integers(0, num_classes, coarse_hw, dtype=np.uint8)
        mask = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)


def bench_loader(
    num_classes: int, size: tuple[int, int], batch: int, num_workers: int, notes: list[str], rounds: int = 2
) -> LoaderResult | None:
    """Loader images/s with the fused augmentation and with the step-by-step one (the baseline).

    Smooth generated PNG pairs (photo-like to decode, unlike noise); the two pipelines alternate
    for ``rounds`` rounds and each keeps its best, so both see the same machine load.
    """
    try:
        from pspnet.data.datasets import open_dataset
        from pspnet.data.loader import build_loader, measure_loader_throughput
        from pspnet.data.transforms import train_transforms
    except ImportError as exc:
        notes.append(f"loader: skipped, data pipeline not available ({exc})")
        return None

    crop = min(713, *size)
    batch = max(batch, 2)
    count = batch * 5
    rates: dict[bool, float] = {True: 0.0, False: 0.0}
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-data-") as tmp:
        root = Path(tmp)
        write_png_pairs(root, count, size, num_classes)
        for _ in range(rounds):
            for fused in (True, False):
                transform = train_transforms(crop, fused=fused)
                dataset = open_dataset(root, "folder", "train", transform=transform, num_classes=num_classes)
                loader = build_loader(dataset, batch, shuffle=True, num_workers=num_workers, drop_last=True)
                rate = measure_loader_throughput(loader, max_batches=count // batch - 1, warmup_batches=1)
                rates[fused] = max(rates[fused], rate)
    speedup = rates[True] / rates[False] if rates[False] > 0 else 0.0
    return LoaderResult(rates[True], batch, num_workers, size, crop, rates[False], speedup)


def _slide_modes(device: torch.device) -> list[tuple[str, torch.dtype | None, bool, bool]]:
    """``(name, autocast dtype, channels_last, CUDA graphs)`` per sliding-window mode on ``device``."""
    if device.type != "cuda":
        return [("slide_fp32", None, False, False)]
    return [
        ("slide_fp32", None, False, False),
        ("slide_bf16_cl", torch.bfloat16, True, False),
        ("slide_bf16_cl_graphs", torch.bfloat16, True, True),
    ]


def bench_slide(
    model: nn.Module,
    device: torch.device,
    batch: int,
    notes: list[str],
    *,
    flip: bool = False,
    warmup: int = 0,
    repeats: int = 1,
) -> list[SlideResult]:
    """Seconds per 1024x2048 image of the authors' sliding-window protocol (crop 713, stride 2/3).

    On CUDA also bf16 autocast + channels-last, and the same with each fixed crop batch replayed as
    a captured CUDA graph (:class:`pspnet.fastpath.CudaGraphModel`); ``windows_batch`` counts the
    crops per forward (flips included).
    """
    try:
        from pspnet.engine.inference import predict_probs
        from pspnet.fastpath import CudaGraphModel
    except ImportError as exc:
        notes.append(f"slide: skipped, pspnet.engine.inference not available ({exc})")
        return []
    image = np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    results: list[SlideResult] = []
    for name, amp_dtype, channels_last, graphs in _slide_modes(device):
        net: nn.Module = copy.deepcopy(model).to(device).eval()
        if graphs:
            net = CudaGraphModel(net, amp_dtype=amp_dtype, channels_last=channels_last)
        elif channels_last:
            net = net.to(memory_format=torch.channels_last)

        def call(
            net: nn.Module = net, amp_dtype: torch.dtype | None = amp_dtype, graphs: bool = graphs
        ) -> None:
            predict_probs(
                net,
                image,
                mode="slide",
                crop_size=713,
                stride_rate=2 / 3,
                flip=flip,
                device=device,
                batch_size=batch,
                to_cpu=False,
                amp_dtype=None if graphs else amp_dtype,  # the graph wrapper applies its own autocast
            )

        reset_peak_memory(device)
        if warmup:
            times, _ = time_calls(call, device, warmup, repeats)
        else:  # one cold call: slide eval of a big model on a CPU takes minutes
            start = time.perf_counter()
            call()
            sync(device)
            times = [time.perf_counter() - start]
        memory, kind = peak_memory_mb(device)
        seconds = statistics.median(times)
        baseline = results[0].seconds if results else seconds
        results.append(
            SlideResult(
                (1024, 2048),
                713,
                2 / 3,
                batch,
                seconds,
                memory,
                kind,
                name=name,
                flip=flip,
                speedup_vs_fp32=baseline / seconds,
            )
        )
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results
