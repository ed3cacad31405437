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
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.bench.measure import peak_memory_mb, quantile, reset_peak_memory, sync, time_calls
from pspnet.bench.results import LoaderResult, SlideResult, TrainResult

__all__ = ["bench_loader", "bench_slide", "bench_train"]


def bench_train(
    model: nn.Module, device: torch.device, size: tuple[int, int], batch: int, warmup: int, repeats: int
) -> list[TrainResult]:
    """Images/s of one SGD step: fp32, plus bf16 autocast + channels-last on CUDA."""
    batch = max(batch, 2)  # BatchNorm on the 1x1 pyramid bin needs two samples in training
    modes = [("train_fp32", None, False)]
    if device.type == "cuda":
        modes.append(("train_bf16_cl", torch.bfloat16, True))
    generator = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(batch, 3, *size, generator=generator)
    target_cpu = torch.randint(0, model.num_classes, (batch, *size), generator=generator)
    results: list[TrainResult] = []
    for name, amp_dtype, channels_last in modes:
        net = copy.deepcopy(model).to(device).train()
        x, target = x_cpu.to(device), target_cpu.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

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
                loss = F.cross_entropy(outputs["out"].float(), target, ignore_index=255)
                if "aux" in outputs:
                    loss = loss + 0.4 * F.cross_entropy(outputs["aux"].float(), target, ignore_index=255)
            loss.backward()
            optimizer.step()

        reset_peak_memory(device)
        times, _ = time_calls(step, device, warmup, repeats)
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
            )
        )
        del net, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def bench_loader(
    num_classes: int, size: tuple[int, int], batch: int, num_workers: int, notes: list[str]
) -> LoaderResult | None:
    try:
        from pspnet.data.datasets import open_dataset
        from pspnet.data.loader import build_loader, measure_loader_throughput
        from pspnet.data.transforms import train_transforms
    except ImportError as exc:
        notes.append(f"loader: skipped, data pipeline not available ({exc})")
        return None
    import cv2

    crop = min(713, *size)
    batch = max(batch, 2)
    count = batch * 5
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-data-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        for i in range(count):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            mask = rng.integers(0, num_classes, size, dtype=np.uint8)
            cv2.imwrite(str(root / "images" / f"{i:04d}.jpg"), image)
            cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)
        dataset = open_dataset(
            root, "folder", "train", transform=train_transforms(crop), num_classes=num_classes
        )
        loader = build_loader(dataset, batch, shuffle=True, num_workers=num_workers, drop_last=True)
        rate = measure_loader_throughput(loader, max_batches=count // batch - 1, warmup_batches=1)
    return LoaderResult(rate, batch, num_workers, size, crop)


def bench_slide(model: nn.Module, device: torch.device, batch: int, notes: list[str]) -> SlideResult | None:
    try:
        from pspnet.engine.inference import predict_probs
    except ImportError as exc:
        notes.append(f"slide: skipped, pspnet.engine.inference not available ({exc})")
        return None
    image = np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    net = copy.deepcopy(model).to(device).eval()
    reset_peak_memory(device)
    start = time.perf_counter()
    predict_probs(net, image, mode="slide", crop_size=713, stride_rate=2 / 3, device=device, batch_size=batch)
    sync(device)
    seconds = time.perf_counter() - start
    memory, kind = peak_memory_mb(device)
    return SlideResult((1024, 2048), 713, 2 / 3, batch, seconds, memory, kind)
