"""``run_benchmark``: inference variants, training step, data loader and sliding-window timings.

Every speed is reported as a ratio to the eager fp32 model *measured in the same run* and as a
fraction of the device's matmul peak *measured in the same run*: the development machines are
shared and their absolute speed varies by 2x from one day to the next, so only same-run ratios
are comparable across reports (the spirit of timm's ``benchmark.py``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.errors import InputError
from pspnet.fastpath import InferenceRunner, prepare_for_inference

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
    "reset_peak_memory",
    "run_benchmark",
]

ALL_VARIANTS = (
    "eager_fp32",
    "channels_last",
    "fold_bn",
    "bf16_cl",
    "compile",
    "onnxruntime",
    "onnxruntime_int8",
)
DEFAULT_VARIANTS = ("eager_fp32", "channels_last", "fold_bn", "bf16_cl", "onnxruntime")
_CUDA_ONLY = frozenset({"bf16_cl"})
_CPU_ONLY = frozenset({"onnxruntime", "onnxruntime_int8"})


@dataclass
class VariantResult:
    """One inference variant at one input size. Latencies are per forward of ``batch`` images."""

    name: str
    size: tuple[int, int]
    batch: int
    latency_ms_median: float
    latency_ms_p10: float
    latency_ms_p90: float
    images_per_s: float
    speedup_vs_eager: float
    gflops_per_image: float
    achieved_gflops: float
    peak_gflops: float
    peak_fraction: float
    peak_dtype: str
    peak_memory_mb: float
    memory_kind: str
    max_abs_diff_vs_eager: float
    first_call_s: float
    note: str = ""


@dataclass
class TrainResult:
    """One SGD step (forward, main + 0.4 aux loss, backward, update) on random data."""

    name: str
    size: tuple[int, int]
    batch: int
    step_ms_median: float
    step_ms_p10: float
    step_ms_p90: float
    images_per_s: float
    speedup_vs_fp32: float
    peak_memory_mb: float


@dataclass
class LoaderResult:
    """Training-pipeline data loader throughput on generated images of the benchmark size."""

    images_per_s: float
    batch: int
    num_workers: int
    image_size: tuple[int, int]
    crop_size: int


@dataclass
class SlideResult:
    """Authors' sliding-window evaluation of one image (softmax averaged over windows)."""

    image_size: tuple[int, int]
    crop_size: int
    stride_rate: float
    windows_batch: int
    seconds: float
    peak_memory_mb: float
    memory_kind: str


@dataclass
class BenchReport:
    """Everything ``pspnet bench`` measured, with the environment needed to interpret it."""

    preset: str
    num_classes: int
    device: str
    device_name: str
    torch_version: str
    threads: int
    warmup: int
    repeats: int
    matmul_peak_gflops: dict[str, float]
    variants: list[VariantResult] = field(default_factory=list)
    train: list[TrainResult] = field(default_factory=list)
    loader: LoaderResult | None = None
    slide: SlideResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


# --- measurement primitives -------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> tuple[list[float], float]:
    """Per-call seconds over ``repeats`` calls after ``warmup`` calls; also the first call's time."""
    first = 0.0
    for i in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, first


def _quantile(values: Sequence[float], q: float) -> float:
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
    times, _ = _time_calls(lambda: torch.mm(a, b), device, warmup=2, repeats=5)
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


# --- variants ---------------------------------------------------------------------------------


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
    if name == "compile":
        if device.type == "cuda":
            runner = prepare_for_inference(
                model, device=device, channels_last=True, amp_dtype=torch.bfloat16, compile=True
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


def _measure_peaks(device: torch.device, variants: Sequence[str]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    if device.type == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        peaks["fp32"] = matmul_peak_gflops(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = matmul_peak_gflops(device, torch.float32)
        torch.backends.cuda.matmul.allow_tf32 = previous
        if any(v in ("bf16_cl", "compile") for v in variants):
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
    times, first = _time_calls(lambda: runner(x), device, warmup, repeats)
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
        latency_ms_p10=_quantile(times, 0.1) * 1e3,
        latency_ms_p90=_quantile(times, 0.9) * 1e3,
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


def _bench_size(
    model: nn.Module,
    variants: Sequence[str],
    device: torch.device,
    size: tuple[int, int],
    batch: int,
    warmup: int,
    repeats: int,
    peaks: dict[str, float],
    notes: list[str],
) -> list[VariantResult]:
    """All variants at one size; eager first (the baseline) with OOM back-off on the batch."""
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
                continue
            if name == "eager_fp32":
                reference, eager_median = out, result.latency_ms_median / 1e3
            elif result.batch != batch:
                result.note = f"batch {result.batch} (OOM at {batch}): speedup is per image"
                result.speedup_vs_eager = result.images_per_s / (batch / eager_median)
            results.append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# --- training, loader, sliding window ---------------------------------------------------------


def _bench_train(
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
        times, _ = _time_calls(step, device, warmup, repeats)
        memory, _ = peak_memory_mb(device)
        median = statistics.median(times)
        baseline = results[0].step_ms_median / 1e3 if results else median
        results.append(
            TrainResult(
                name=name,
                size=size,
                batch=batch,
                step_ms_median=median * 1e3,
                step_ms_p10=_quantile(times, 0.1) * 1e3,
                step_ms_p90=_quantile(times, 0.9) * 1e3,
                images_per_s=batch / median,
                speedup_vs_fp32=baseline / median,
                peak_memory_mb=memory,
            )
        )
        del net, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _bench_loader(
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


def _bench_slide(model: nn.Module, device: torch.device, batch: int, notes: list[str]) -> SlideResult | None:
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
    _sync(device)
    seconds = time.perf_counter() - start
    memory, kind = peak_memory_mb(device)
    return SlideResult((1024, 2048), 713, 2 / 3, batch, seconds, memory, kind)


# --- entry point ------------------------------------------------------------------------------


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


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
    loader: bool = False,
    slide: bool = False,
    loader_workers: int | None = None,
    json_path: str | os.PathLike[str] | None = None,
    model: nn.Module | None = None,
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
        loader: also time the training data loader on generated images of the first size.
        slide: also time sliding-window evaluation of one 1024x2048 image (crop 713, stride 2/3).
        loader_workers: loader worker processes (default: min(4, CPU count)).
        json_path: write the report there as JSON.
        model: benchmark this model instead of building ``preset``.
    """
    device = torch.device(device)
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
    peaks = _measure_peaks(device, variants)
    report = BenchReport(
        preset=getattr(model, "preset_name", preset),
        num_classes=int(getattr(model, "num_classes", num_classes)),
        device=str(device),
        device_name=_device_name(device),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        warmup=warmup,
        repeats=repeats,
        matmul_peak_gflops=peaks,
        notes=notes,
    )
    for size in sizes:
        report.variants += _bench_size(model, variants, device, size, batch, warmup, repeats, peaks, notes)
    if train:
        report.train = _bench_train(model, device, sizes[0], batch, warmup, repeats)
    if loader:
        workers = loader_workers if loader_workers is not None else min(4, os.cpu_count() or 1)
        report.loader = _bench_loader(report.num_classes, sizes[0], batch, workers, notes)
    if slide:
        report.slide = _bench_slide(model, device, max(batch, 1), notes)
    if json_path is not None:
        report.write_json(json_path)
    return report


def format_report(report: BenchReport) -> str:
    """A plain-text table of the report (what ``pspnet bench`` prints)."""
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in report.matmul_peak_gflops.items())
    lines = [
        f"{report.preset} ({report.num_classes} classes) on {report.device} [{report.device_name}], "
        f"torch {report.torch_version}, {report.threads} threads; matmul peak GFLOP/s: {peaks}",
        f"{'variant':<18}{'size':>11}{'batch':>6}{'ms (p10-p90)':>24}{'img/s':>9}{'vs eager':>9}"
        f"{'GFLOP/img':>10}{'GFLOP/s':>9}{'%peak':>7}{'mem MB':>9}{'maxdiff':>9}",
    ]
    for v in report.variants:
        spread = f"{v.latency_ms_median:.1f} ({v.latency_ms_p10:.1f}-{v.latency_ms_p90:.1f})"
        lines.append(
            f"{v.name:<18}{v.size[0]:>5}x{v.size[1]:<5}{v.batch:>6}{spread:>24}{v.images_per_s:>9.2f}"
            f"{v.speedup_vs_eager:>8.2f}x{v.gflops_per_image:>10.1f}{v.achieved_gflops:>9.1f}"
            f"{100 * v.peak_fraction:>6.0f}%{v.peak_memory_mb:>9.0f}{v.max_abs_diff_vs_eager:>9.1e}"
        )
    for t in report.train:
        lines.append(
            f"{t.name:<18}{t.size[0]:>5}x{t.size[1]:<5}{t.batch:>6}"
            f"{f'{t.step_ms_median:.1f} ({t.step_ms_p10:.1f}-{t.step_ms_p90:.1f})':>24}"
            f"{t.images_per_s:>9.2f}{t.speedup_vs_fp32:>8.2f}x  (vs train_fp32)  "
            f"mem {t.peak_memory_mb:.0f} MB"
        )
    if report.loader is not None:
        lo = report.loader
        lines.append(
            f"loader: {lo.images_per_s:.1f} images/s ({lo.image_size[0]}x{lo.image_size[1]} -> crop "
            f"{lo.crop_size}, batch {lo.batch}, {lo.num_workers} workers)"
        )
    if report.slide is not None:
        s = report.slide
        lines.append(
            f"slide: {s.seconds:.2f} s for one {s.image_size[0]}x{s.image_size[1]} image "
            f"(crop {s.crop_size}, "
            f"stride {s.stride_rate:.3f}), peak memory {s.peak_memory_mb:.0f} MB ({s.memory_kind})"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
