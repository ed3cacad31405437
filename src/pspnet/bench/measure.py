"""Measurement primitives: timing with device sync, quantiles, matmul peak, FLOPs, peak memory.

Kept apart from the workloads so that benchmark scripts (benchmarks/*.py) time things the same way
``pspnet bench`` does.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "count_flops",
    "device_name",
    "matmul_peak_gflops",
    "peak_memory_mb",
    "quantile",
    "reset_peak_memory",
    "sync",
    "time_calls",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> tuple[list[float], float]:
    """Per-call seconds over ``repeats`` calls after ``warmup`` calls; also the first call's time."""
    first = 0.0
    for i in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        sync(device)
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, first


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def matmul_peak_gflops(
    device: torch.device | str, dtype: torch.dtype = torch.float32, n: int | None = None
) -> float:
    """Best GFLOP/s of an ``n x n`` matmul: the ceiling a conv network can approach on ``device``."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times, _ = time_calls(lambda: torch.mm(a, b), device, warmup=2, repeats=5)
    return 2 * n**3 / min(times) / 1e9


def count_flops(model: nn.Module, size: tuple[int, int], device: torch.device | str = "cpu") -> float:
    """FLOPs of one eval forward of one image (convs, matmuls: what FlopCounterMode counts).

    Runs on the meta device when possible (no compute, no memory), else on ``device``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        meta_model = copy.deepcopy(model).to("meta").eval()
        x = torch.empty(1, 3, *size, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta_model(x)
        return float(counter.get_total_flops())
    except Exception:  # an op without a meta kernel: count on the real device
        model.eval()
        x = torch.zeros(1, 3, *size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return float(counter.get_total_flops())
    finally:
        model.train(was_training)


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory window; False when the OS does not allow it (CPU RSS on non-Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory since the last reset: CUDA allocator peak on GPU, peak RSS (VmHWM) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024, "rss_peak"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_peak_process"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"
