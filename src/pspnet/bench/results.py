"""What ``pspnet bench`` reports: one dataclass per kind of measurement, JSON and a text table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchReport", "LoaderResult", "SlideResult", "TrainResult", "VariantResult", "format_report"]


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
    first_step_s: float = 0.0


@dataclass
class LoaderResult:
    """Training-pipeline data loader throughput on generated images of the benchmark size.

    ``images_per_s`` is the default (fused) augmentation; ``stepwise_images_per_s`` the authors'
    whole-image, step-by-step augmentation measured in the same run, as the baseline.
    """

    images_per_s: float
    batch: int
    num_workers: int
    image_size: tuple[int, int]
    crop_size: int
    stepwise_images_per_s: float = 0.0
    speedup_vs_stepwise: float = 0.0


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
    name: str = "slide_fp32"
    flip: bool = False
    speedup_vs_fp32: float = 1.0


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
    slide: list[SlideResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def format_report(report: BenchReport) -> str:
    """A plain-text table of the report (what ``pspnet bench`` prints)."""
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in report.matmul_peak_gflops.items())
    lines = [
        f"{report.preset} ({report.num_classes} classes) on {report.device} [{report.device_name}], "
        f"torch {report.torch_version}, {report.threads} threads; matmul peak GFLOP/s: {peaks}",
        f"{'variant':<18}{'size':>11}{'batch':>6}{'ms (p10-p90)':>28}{'img/s':>9}{'vs eager':>9}"
        f"{'GFLOP/img':>10}{'GFLOP/s':>9}{'%peak':>7}{'mem MB':>9}{'maxdiff':>9}",
    ]
    for v in report.variants:
        spread = f"{v.latency_ms_median:.1f} ({v.latency_ms_p10:.1f}-{v.latency_ms_p90:.1f})"
        lines.append(
            f"{v.name:<18}{v.size[0]:>5}x{v.size[1]:<5}{v.batch:>6}{spread:>28}{v.images_per_s:>9.2f}"
            f"{v.speedup_vs_eager:>8.2f}x{v.gflops_per_image:>10.1f}{v.achieved_gflops:>9.1f}"
            f"{100 * v.peak_fraction:>6.0f}%{v.peak_memory_mb:>9.0f}{v.max_abs_diff_vs_eager:>9.1e}"
        )
    for t in report.train:
        lines.append(
            f"{t.name:<18}{t.size[0]:>5}x{t.size[1]:<5}{t.batch:>6}"
            f"{f'{t.step_ms_median:.1f} ({t.step_ms_p10:.1f}-{t.step_ms_p90:.1f})':>28}"
            f"{t.images_per_s:>9.2f}{t.speedup_vs_fp32:>8.2f}x  (vs train_fp32)  "
            f"mem {t.peak_memory_mb:.0f} MB"
            + (f", first step {t.first_step_s:.1f} s" if t.first_step_s > 1 else "")
        )
    if report.loader is not None:
        lo = report.loader
        lines.append(
            f"loader: {lo.images_per_s:.1f} images/s ({lo.image_size[0]}x{lo.image_size[1]} -> crop "
            f"{lo.crop_size}, batch {lo.batch}, {lo.num_workers} workers), "
            f"{lo.speedup_vs_stepwise:.2f}x vs stepwise augmentation "
            f"({lo.stepwise_images_per_s:.1f} images/s)"
        )
    for s in report.slide:
        lines.append(
            f"{s.name}: {s.seconds:.3f} s per {s.image_size[0]}x{s.image_size[1]} image "
            f"(crop {s.crop_size}, stride {s.stride_rate:.3f}, {'flip, ' if s.flip else ''}"
            f"{s.windows_batch} crops per forward), {s.speedup_vs_fp32:.2f}x vs slide_fp32, "
            f"peak memory {s.peak_memory_mb:.0f} MB ({s.memory_kind})"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
