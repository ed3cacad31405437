"""Inference variants (eager, channels-last, folded BN, bf16, compile, onnxruntime) at one size.

The eager fp32 model is always measured first: every other variant is reported as a ratio to it
and checked against its output (max abs diff).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pspnet.bench.measure import (
    count_flops,
    matmul_peak_gflops,
    peak_memory_mb,
    quantile,
    reset_peak_memory,
    time_calls,
)
from pspnet.bench.results import VariantResult
from pspnet.errors import InputError
from pspnet.fastpath import InferenceRunner, prepare_for_inference

__all__ = ["ALL_VARIANTS", "DEFAULT_VARIANTS", "bench_size", "measure_peaks"]

ALL_VARIANTS = (
    "eager_fp32",
    "channels_last",
    "fold_bn",
    "bf16_cl",
    "bf16_weights",
    "compile",
    "onnxruntime",
    "onnxruntime_int8",
)
DEFAULT_VARIANTS = ("eager_fp32", "channels_last", "fold_bn", "bf16_cl", "bf16_weights", "onnxruntime")
_CUDA_ONLY = frozenset({"bf16_cl", "bf16_weights"})
_CPU_ONLY = frozenset({"onnxruntime", "onnxruntime_int8"})


def _onnx_runner(
    model: nn.Module, size: tuple[int, int], workdir: Path, int8: bool
) -> Callable[[Tensor], Tensor]:
    from pspnet.export import _session, export_onnx, quantize_int8

    path = export_onnx(model, workdir / "model.onnx", example_size=size)
    if int8:
        generator = torch.Generator().manual_seed(0)
        calibration = [torch.randn(1, 3, *size, generator=generator) for _ in range(4)]
        path = quantize_int8(path, workdir / "model_int8.onnx", calibration)
    session = _session(path, threads=torch.get_num_threads())

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(["out"], {"input": x.numpy()})[0])

    return run


def _build_variant(
    name: str, model: nn.Module, device: torch.device, size: tuple[int, int], workdir: Path
) -> tuple[Callable[[Tensor], Tensor], str]:
    """The callable for variant ``name`` and the dtype whose matmul peak it should be judged by."""
    fp32_peak = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"
    if name == "eager_fp32":
        return InferenceRunner(model, device), fp32_peak
    if name == "channels_last":
        return prepare_for_inference(model, device=device, channels_last=True, fold_bn=False), fp32_peak
    if name == "fold_bn":
        return prepare_for_inference(model, device=device, fold_bn=True), fp32_peak
    if name == "bf16_cl":
        runner = prepare_for_inference(model, device=device, channels_last=True, amp_dtype=torch.bfloat16)
        return runner, "bf16"
    if name == "bf16_weights":  # folded BN, weights and input in bf16: no per-call weight casts
        runner = prepare_for_inference(model, device=device, channels_last=True, weights_dtype=torch.bfloat16)
        return runner, "bf16"
    if name == "compile":
        if device.type == "cuda":  # the fastest measured GPU path: bf16 weights + compile
            runner = prepare_for_inference(
                model, device=device, channels_last=True, weights_dtype=torch.bfloat16, compile=True
            )
            return runner, "bf16"
        return prepare_for_inference(model, device=device, compile=True), fp32_peak
    if name in ("onnxruntime", "onnxruntime_int8"):
        return _onnx_runner(model, size, workdir, int8=name.endswith("int8")), "fp32"
    raise InputError(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")


def _skip_reason(name: str, device: torch.device) -> str | None:
    if name in _CUDA_ONLY and device.type != "cuda":
        return f"{name}: skipped, needs CUDA (autocast is not used on CPU)"
    if name in _CPU_ONLY and device.type != "cpu":
        return f"{name}: skipped, CPU-only variant"
    if name.startswith("onnxruntime"):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return f"{name}: skipped, onnx/onnxruntime not installed (pip install 'pspnet[onnx]')"
    return None


def measure_peaks(device: torch.device, variants: Sequence[str]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    if device.type == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        peaks["fp32"] = matmul_peak_gflops(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = matmul_peak_gflops(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = previous
        if any(v in ("bf16_cl", "bf16_weights", "compile") for v in variants):
            peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    else:
        peaks["fp32"] = matmul_peak_gflops(device, torch.float32)
    return peaks


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _bench_variant(
    name: str,
    model: nn.Module,
    device: torch.device,
    size: tuple[int, int],
    batch: int,
    warmup: int,
    repeats: int,
    workdir: Path,
    flops: float,
    peaks: dict[str, float],
    reference: Tensor | None,
    eager_median: float | None,
) -> tuple[VariantResult, Tensor]:
    runner, peak_dtype = _build_variant(name, model, device, size, workdir)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    reset_peak_memory(device)
    times, first = time_calls(lambda: runner(x), device, warmup, repeats)
    memory, memory_kind = peak_memory_mb(device)
    out = runner(x).float().cpu()
    diff = float((out - reference).abs().max()) if reference is not None else 0.0
    median = statistics.median(times)
    achieved = flops * batch / median / 1e9
    peak = peaks.get(peak_dtype, peaks.get("fp32", float("nan")))
    result = VariantResult(
        name=name,
        size=size,
        batch=batch,
        latency_ms_median=median * 1e3,
        latency_ms_p10=quantile(times, 0.1) * 1e3,
        latency_ms_p90=quantile(times, 0.9) * 1e3,
        images_per_s=batch / median,
        speedup_vs_eager=(eager_median / median) if eager_median else 1.0,
        gflops_per_image=flops / 1e9,
        achieved_gflops=achieved,
        peak_gflops=peak,
        peak_fraction=achieved / peak if peak > 0 else float("nan"),
        peak_dtype=peak_dtype,
        peak_memory_mb=memory,
        memory_kind=memory_kind,
        max_abs_diff_vs_eager=diff,
        first_call_s=first,
    )
    return result, out if reference is None else reference


def bench_size(
    model: nn.Module,
    variants: Sequence[str],
    device: torch.device,
    size: tuple[int, int],
    batch: int,
    warmup: int,
    repeats: int,
    peaks: dict[str, float],
    notes: list[str],
    progress: Callable[[str], None] | None = None,
) -> list[VariantResult]:
    """All variants at one size; eager first (the baseline) with OOM back-off on the batch.

    ``progress`` receives one line as each variant starts and one as it ends (a compiled variant
    can take minutes before its first call returns, and a silent run looks hung).
    """
    say = progress or (lambda line: None)
    shown = f"{size[0]}x{size[1]}"
    flops = count_flops(model, size, device)
    order = ["eager_fp32"] + [v for v in variants if v != "eager_fp32"]
    results: list[VariantResult] = []
    reference: Tensor | None = None
    eager_median: float | None = None
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-") as tmp:
        for name in order:
            reason = _skip_reason(name, device)
            if reason:
                if reason not in notes:
                    notes.append(reason)
                continue
            current = batch
            say(f"{name} {shown}: running ({warmup} warm-up + {repeats} timed calls)")
            while True:
                try:
                    result, out = _bench_variant(
                        name,
                        model,
                        device,
                        size,
                        current,
                        warmup,
                        repeats,
                        Path(tmp),
                        flops,
                        peaks,
                        reference[:current] if reference is not None else None,
                        eager_median,
                    )
                    break
                except Exception as exc:
                    if device.type == "cuda" and _is_oom(exc) and current > 1:
                        torch.cuda.empty_cache()
                        notes.append(
                            f"{name} {size[0]}x{size[1]}: out of memory at batch {current}, retrying"
                        )
                        current //= 2
                        if name == "eager_fp32":
                            batch = current  # every variant compares at the baseline's batch
                        continue
                    if name == "eager_fp32":
                        raise
                    notes.append(f"{name} {size[0]}x{size[1]}: failed ({type(exc).__name__}: {exc})")
                    result = None
                    break
            if result is None:
                say(f"{name} {shown}: failed (see the notes)")
                continue
            say(
                f"{name} {shown}: {result.latency_ms_median:.1f} ms median, "
                f"{result.images_per_s:.2f} images/s"
            )
            if name == "eager_fp32":
                reference, eager_median = out, result.latency_ms_median / 1e3
            elif result.batch != batch:
                result.note = f"batch {result.batch} (OOM at {batch}): speedup is per image"
                result.speedup_vs_eager = result.images_per_s / (batch / eager_median)
            results.append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results
