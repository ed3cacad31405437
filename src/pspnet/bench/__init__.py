"""``run_benchmark``: inference variants, training step, data loader and sliding-window timings.

Every speed is reported as a ratio to the eager fp32 model *measured in the same run* and as a
fraction of the device's matmul peak *measured in the same run*: the development machines are
shared and their absolute speed varies by 2x from one day to the next, so only same-run ratios
are comparable across reports (the spirit of timm's ``benchmark.py``).

Layout: :mod:`.measure` (timing, FLOPs, memory), :mod:`.variants` (inference variants),
:mod:`.workloads` (training step, loader, sliding window), :mod:`.results` (report and table).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pspnet.bench.measure import (
    count_flops,
    device_name,
    matmul_peak_gflops,
    peak_memory_mb,
    quantile,
    reset_peak_memory,
    time_calls,
)
from pspnet.bench.results import (
    BenchReport,
    LoaderResult,
    SlideResult,
    TrainResult,
    VariantResult,
    format_report,
)
from pspnet.bench.variants import ALL_VARIANTS, DEFAULT_VARIANTS, bench_size, measure_peaks
from pspnet.bench.workloads import bench_loader, bench_slide, bench_train
from pspnet.errors import InputError

__all__ = [
    "ALL_VARIANTS",
    "DEFAULT_VARIANTS",
    "BenchReport",
    "LoaderResult",
    "SlideResult",
    "TrainResult",
    "VariantResult",
    "count_flops",
    "format_report",
    "matmul_peak_gflops",
    "peak_memory_mb",
    "quantile",
    "reset_peak_memory",
    "run_benchmark",
    "time_calls",
]


def run_benchmark(
    preset: str = "pspnet50",
    *,
    num_classes: int = 19,
    sizes: Sequence[tuple[int, int]] = ((512, 1024),),
    batch: int = 1,
    device: str | torch.device = "cpu",
    variants: Sequence[str] = DEFAULT_VARIANTS,
    warmup: int = 2,
    repeats: int = 5,
    train: bool = False,
    train_compile: bool = False,
    loader: bool = False,
    slide: bool = False,
    slide_flip: bool = False,
    loader_workers: int | None = None,
    json_path: str | os.PathLike[str] | None = None,
    model: nn.Module | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the inference variants (and optionally training, loading, sliding window).

    Args:
        preset: model preset (random weights: speed does not depend on them).
        num_classes: output classes (19 = Cityscapes).
        sizes: input ``(H, W)`` sizes.
        batch: images per forward; on CUDA halved on out-of-memory and retried.
        device: ``"cpu"`` or ``"cuda"``.
        variants: from :data:`ALL_VARIANTS`; ``eager_fp32`` is always measured first as the
            baseline. CUDA-only/CPU-only variants are skipped with a note on the other device.
        warmup: untimed calls per variant (the first one's time is reported as ``first_call_s``).
        repeats: timed calls per variant; median and p10/p90 are reported.
        train: also time SGD training steps (batch >= 2) at the first size.
        train_compile: with ``train``, also the step with the model compiled (``optim.compile``).
        loader: also time the training data loader on generated PNGs of the first size, with the
            fused augmentation and the step-by-step one (the baseline, same run).
        slide: also time sliding-window evaluation of one 1024x2048 image (crop 713, stride 2/3):
            one cold call on CPU; on CUDA after a warm-up, fp32, bf16 + channels-last and the
            same with CUDA graphs. ``batch`` crops per forward (at least 2).
        slide_flip: the sliding-window run also averages the flipped image (authors' ``--flip``).
        loader_workers: loader worker processes (default: min(4, CPU count)).
        json_path: write the report there as JSON.
        model: benchmark this model instead of building ``preset``.
        progress: called with one line as each variant or workload starts and ends (``pspnet
            bench`` prints them on stderr, so a run of several minutes is not silent).
    """
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available; use --device cpu")
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    sizes = [(int(h), int(w)) for h, w in sizes]
    if not sizes or any(min(s) < 8 for s in sizes):
        raise InputError(f"sizes must be non-empty with H, W >= 8, got {sizes}")
    if batch < 1 or repeats < 1 or warmup < 0:
        raise InputError(f"need batch >= 1, repeats >= 1, warmup >= 0; got {batch}, {repeats}, {warmup}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if model is None:
        from pspnet.models.registry import create_model

        model = create_model(preset, num_classes=num_classes)
    model = model.to(device).eval()
    notes: list[str] = []
    if device.type == "cpu":
        notes.append(
            "CPU: shared machines are noisy, compare only ratios measured in the same run; memory is the "
            "process's peak RSS during each variant (everything already resident included)"
        )
    peaks = measure_peaks(device, variants)
    report = BenchReport(
        preset=getattr(model, "preset_name", preset),
        num_classes=int(getattr(model, "num_classes", num_classes)),
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        warmup=warmup,
        repeats=repeats,
        matmul_peak_gflops=peaks,
        notes=notes,
    )
    say = progress or (lambda line: None)
    for size in sizes:
        report.variants += bench_size(
            model, variants, device, size, batch, warmup, repeats, peaks, notes, progress=progress
        )
    if train:
        say(f"training step {sizes[0][0]}x{sizes[0][1]}: running")
        report.train = bench_train(
            model, device, sizes[0], batch, warmup, repeats, compile_step=train_compile
        )
        say(f"training step {sizes[0][0]}x{sizes[0][1]}: done")
    if loader:
        workers = loader_workers if loader_workers is not None else min(4, os.cpu_count() or 1)
        say(f"data loader {sizes[0][0]}x{sizes[0][1]}: running")
        report.loader = bench_loader(report.num_classes, sizes[0], batch, workers, notes)
        say(f"data loader {sizes[0][0]}x{sizes[0][1]}: done")
    if slide:
        say("sliding window 1024x2048: running")
        cuda = device.type == "cuda"
        report.slide = bench_slide(
            model,
            device,
            max(batch, 2),
            notes,
            flip=slide_flip,
            warmup=1 if cuda else 0,
            repeats=min(repeats, 3) if cuda else 1,
        )
        say("sliding window 1024x2048: done")
    if json_path is not None:
        report.write_json(json_path)
    return report
