"""Cheaper CPU inference modes and int8, with their accuracy cost measured on the demo benchmark.

On a CPU that already runs the eager model near its matmul peak, speed comes only from doing less
work. This script measures what each cheaper mode costs in accuracy and what it buys in speed:

1. Inference modes of one ``pspnet_tiny`` trained with the demo's default settings (the demo's own
   data and training functions), scored on the demo validation set: the paper's OS8 + flip, OS8
   (the default), OS16 with and without flip, a 0.75 test scale (smaller input, probabilities
   resized back) and OS16 + 0.75. mIoU, mean IoU of the context classes, agreement with OS8, and
   images/s as a ratio to OS8 measured in the same run (modes timed in interleaved rounds).
2. The same modes' speed on PSPNet-50 (random weights, 19 classes) at a real size, because the
   tiny model's cost profile differs (its head is a small share of its work).
3. int8: the trained model exported to ONNX, quantized with :func:`pspnet.export.quantize_int8`
   (calibrated on demo TRAIN images), and fp32 / int8 ONNX scored on the validation set: mIoU,
   pixel agreement with the fp32 PyTorch model, images/s ratio to PyTorch eager fp32.

Every speed figure is a same-run ratio (the machines are shared); accuracy is from one seed.

    python benchmarks/cpu_modes.py --json scratch/cpu_modes/cpu_modes.json
    python benchmarks/cpu_modes.py --model pspnet_demo/pspnet_tiny.safetensors   # skip training
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pspnet.data.info import CONTEXT_DEMO
from pspnet.demo import DemoSettings
from pspnet.engine.inference import predict_probs
from pspnet.engine.metrics import ConfusionMatrix, SegmentationMetrics
from pspnet.models.stride import with_output_stride

__all__ = [
    "BASELINE",
    "MODES",
    "CpuModesReport",
    "CpuModesSettings",
    "Int8Row",
    "LargeModeRow",
    "Mode",
    "ModeRow",
    "format_report",
    "main",
    "run_cpu_modes",
]


@dataclass(frozen=True)
class Mode:
    """One way to run inference: output stride, test scale (of the image's long side), flip."""

    name: str
    output_stride: int
    scale: float
    flip: bool
    description: str


MODES: tuple[Mode, ...] = (
    Mode("paper", 8, 1.0, True, "OS8 + flip (the paper's single-scale test)"),
    Mode("os8", 8, 1.0, False, "OS8, no flip (pspnet's default)"),
    Mode("os16_flip", 16, 1.0, True, "OS16 + flip"),
    Mode("os16", 16, 1.0, False, "OS16, no flip"),
    Mode("scale0.75", 8, 0.75, False, "OS8, input at 0.75x, resized back"),
    Mode("os16_scale0.75", 16, 0.75, False, "OS16, input at 0.75x"),
)
BASELINE = "os8"
_MATMUL = "matmul 1024^3 fp32"


@dataclass(frozen=True)
class CpuModesSettings:
    """The budget. Defaults: the demo's own data and training settings, PSPNet-50 at 473x473."""

    out_dir: Path = Path("scratch/cpu_modes")
    cache_dir: Path = Path("scratch/demo_cache")
    model: Path | None = None  # a trained pspnet_tiny; None trains one with the demo's settings
    seed: int = DemoSettings.seed
    size: int = DemoSettings.size
    num_train: int = DemoSettings.num_train
    num_val: int = DemoSettings.num_val
    iterations: int = DemoSettings.iterations
    batch_size: int = DemoSettings.batch_size
    speed_images: int = 24  # validation images per timed round
    rounds: int = 5  # timed rounds, modes interleaved; the median round counts
    large_preset: str = "pspnet50"
    large_classes: int = 19
    large_size: int = 473
    large_rounds: int = 3
    int8: bool = True
    calibration_images: int = 32
    threads: int = 1
    data_workers: int | None = 1  # processes generating the demo data; 1 = inline (one core)
    progress: bool = True


@dataclass
class ModeRow:
    """One inference mode of the trained demo model."""

    name: str
    description: str
    output_stride: int
    scale: float
    flip: bool
    miou: float
    context_iou: float
    allacc: float
    agreement_with_baseline: float
    images_per_s: float
    speed_ratio: float
    gflops_per_image: float
    class_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class LargeModeRow:
    """One inference mode of the large model (random weights): speed only."""

    name: str
    median_s: float
    speed_ratio: float
    gflops_per_image: float
    percent_of_matmul_peak: float


@dataclass
class Int8Row:
    """The trained demo model run by PyTorch fp32, onnxruntime fp32 or onnxruntime int8."""

    name: str
    miou: float
    context_iou: float
    allacc: float
    agreement_with_torch_fp32: float
    images_per_s: float
    speed_ratio: float


@dataclass
class CpuModesReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    model_path: str
    num_val_images: int
    modes: list[ModeRow] = field(default_factory=list)
    large: list[LargeModeRow] = field(default_factory=list)
    large_matmul_peak_gflops: float = 0.0
    int8: list[Int8Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- measurement helpers --------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    """CPU model and the ISA flags that decide whether int8 can be faster (VNNI, AMX)."""
    model_name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model_name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **versions,
    }


def _context_iou(metrics: SegmentationMetrics) -> float:
    ids = [CONTEXT_DEMO.class_names.index(name) for name in CONTEXT_DEMO.context_classes]
    return float(np.mean([metrics.iou[i] for i in ids]))


def _predict(model: nn.Module, image: np.ndarray, mode: Mode) -> torch.Tensor:
    # no base_size: the scale multiplies the image's own long side
    return predict_probs(model, image, scales=(mode.scale,), flip=mode.flip)


def _score(
    predict: Callable[[np.ndarray], torch.Tensor],
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    progress: str | None,
) -> tuple[SegmentationMetrics, list[np.ndarray]]:
    """Metrics over the whole set (one confusion matrix, as the authors) and the label maps."""
    confusion = ConfusionMatrix(CONTEXT_DEMO.num_classes, CONTEXT_DEMO.ignore_index)
    preds: list[np.ndarray] = []
    iterator: Any = zip(images, masks, strict=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(images), desc=progress, unit="img", dynamic_ncols=True)
    for image, mask in iterator:
        pred = predict(image).argmax(0)
        confusion.update(pred, torch.from_numpy(mask))
        preds.append(pred.numpy().astype(np.uint8))
    return confusion.compute(), preds


def _agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    same = sum(int((x == y).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.size for x in a)


def _interleaved_seconds(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` rounds, all callables timed in every round.

    Interleaving makes the ratios robust to the load of a shared machine drifting during the run:
    a slow minute slows every mode of that round, not one mode.
    """
    for run in runs.values():  # warm-up: allocator, oneDNN primitive caches, onnxruntime arenas
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, rounds)):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _flops_table(variants: dict[int, nn.Module], size: int) -> Callable[[Mode], float]:
    """GFLOPs per image of each mode (one network pass per image, two with flip), counted once per shape."""
    from pspnet.bench.measure import count_flops

    counted: dict[tuple[int, int], float] = {}

    def gflops(mode: Mode) -> float:
        side = size if mode.scale == 1.0 else max(1, round(size * mode.scale))
        key = (mode.output_stride, side)
        if key not in counted:
            counted[key] = count_flops(variants[mode.output_stride], (side, side)) / 1e9
        return counted[key] * (2 if mode.flip else 1)

    return gflops


# --- the three parts ------------------------------------------------------------------------------


def _demo_data_and_model(settings: CpuModesSettings, notes: list[str]) -> tuple[Any, Any, nn.Module, Path]:
    from pspnet.data.synthetic import ensure_demo_data
    from pspnet.demo import _train, open_demo_datasets
    from pspnet.io.checkpoint import load_model, save_model

    demo = DemoSettings(
        out_dir=settings.out_dir,
        cache_dir=settings.cache_dir,
        seed=settings.seed,
        size=settings.size,
        num_train=settings.num_train,
        num_val=settings.num_val,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        threads=settings.threads,
        progress=settings.progress,
    )
    # what the demo's own _datasets does, with the number of generator processes under our control
    root = ensure_demo_data(
        settings.cache_dir,
        settings.seed,
        num_train=settings.num_train,
        num_val=settings.num_val,
        size=settings.size,
        workers=settings.data_workers,
        progress=settings.progress,
    )
    train_set, val_set = open_demo_datasets(root, settings.size, settings.seed)
    if settings.model is not None:
        model = load_model(settings.model).eval()
        notes.append(f"model loaded from {settings.model}")
        return train_set, val_set, model, Path(settings.model)
    model, _, seconds = _train("pspnet_tiny", train_set, demo, settings.out_dir)
    path = save_model(model, Path(settings.out_dir) / "pspnet_tiny.safetensors")
    notes.append(f"pspnet_tiny trained with the demo's settings in {seconds:.0f} s, saved to {path}")
    return train_set, val_set, model.eval(), path


def _demo_modes(
    model: nn.Module, images: list[np.ndarray], masks: list[np.ndarray], settings: CpuModesSettings
) -> tuple[list[ModeRow], list[np.ndarray]]:
    variants = {
        os_: with_output_stride(model, os_).eval() for os_ in sorted({m.output_stride for m in MODES})
    }
    scored: dict[str, tuple[SegmentationMetrics, list[np.ndarray]]] = {}
    for mode in MODES:
        net = variants[mode.output_stride]
        scored[mode.name] = _score(
            lambda image, net=net, mode=mode: _predict(net, image, mode),
            images,
            masks,
            f"score {mode.name}" if settings.progress else None,
        )
    subset = images[: settings.speed_images]

    def timed(mode: Mode) -> Callable[[], None]:
        net = variants[mode.output_stride]
        return lambda: [_predict(net, image, mode) for image in subset]

    seconds = _interleaved_seconds({mode.name: timed(mode) for mode in MODES}, settings.rounds)
    baseline_preds = scored[BASELINE][1]
    gflops = _flops_table(variants, settings.size)
    rows = []
    for mode in MODES:
        metrics, preds = scored[mode.name]
        rows.append(
            ModeRow(
                name=mode.name,
                description=mode.description,
                output_stride=mode.output_stride,
                scale=mode.scale,
                flip=mode.flip,
                miou=float(metrics.miou),
                context_iou=_context_iou(metrics),
                allacc=float(metrics.allacc),
                agreement_with_baseline=_agreement(preds, baseline_preds),
                images_per_s=len(subset) / seconds[mode.name],
                speed_ratio=seconds[BASELINE] / seconds[mode.name],
                gflops_per_image=gflops(mode),
                class_iou=dict(zip(CONTEXT_DEMO.class_names, map(float, metrics.iou), strict=True)),
            )
        )
    return rows, baseline_preds


def _large_modes(settings: CpuModesSettings) -> tuple[list[LargeModeRow], float]:
    from pspnet import create_model

    torch.manual_seed(settings.seed)
    base = create_model(settings.large_preset, num_classes=settings.large_classes).eval()
    variants = {os_: with_output_stride(base, os_).eval() for os_ in sorted({m.output_stride for m in MODES})}
    size = settings.large_size
    image = np.random.default_rng(settings.seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    runs = {
        mode.name: (lambda mode=mode: _predict(variants[mode.output_stride], image, mode)) for mode in MODES
    }
    # The matmul peak is timed inside the same rounds: on a shared machine a peak taken at a quiet
    # moment and a model timed at a busy one would make a meaningless percentage.
    n, calls = 1024, 5
    a, b = torch.randn(n, n), torch.randn(n, n)
    runs[_MATMUL] = lambda: [torch.mm(a, b) for _ in range(calls)]
    seconds = _interleaved_seconds(runs, settings.large_rounds)
    peak = calls * 2 * n**3 / seconds[_MATMUL] / 1e9
    flops_of = _flops_table(variants, size)
    rows = []
    for mode in MODES:
        gflops = flops_of(mode)
        rows.append(
            LargeModeRow(
                name=mode.name,
                median_s=seconds[mode.name],
                speed_ratio=seconds[BASELINE] / seconds[mode.name],
                gflops_per_image=gflops,
                percent_of_matmul_peak=100 * gflops / seconds[mode.name] / peak,
            )
        )
    return rows, peak


def _int8(
    model: nn.Module,
    train_set: Any,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    torch_preds: list[np.ndarray],
    settings: CpuModesSettings,
) -> list[Int8Row]:
    from pspnet.export import OnnxModel, export_onnx, quantize_int8

    out = Path(settings.out_dir)
    fp32_path = export_onnx(model, out / "pspnet_tiny.onnx", example_size=(settings.size, settings.size))
    count = min(settings.calibration_images, len(train_set))
    picks = np.linspace(0, len(train_set) - 1, count).round().astype(int)
    # unaugmented train images (load_raw), normalised as the model expects
    calibration = [model.preprocess.to_tensor(train_set.load_raw(int(i))[0]) for i in picks]
    int8_path = quantize_int8(fp32_path, out / "pspnet_tiny_int8.onnx", calibration)
    runners: dict[str, nn.Module] = {
        "torch_fp32": model,
        "onnx_fp32": OnnxModel(fp32_path, threads=settings.threads),
        "onnx_int8": OnnxModel(int8_path, threads=settings.threads),
    }
    baseline = next(m for m in MODES if m.name == BASELINE)
    scored = {}
    for name, net in runners.items():
        scored[name] = _score(
            lambda image, net=net: _predict(net, image, baseline),
            images,
            masks,
            f"score {name}" if settings.progress else None,
        )
    subset = images[: settings.speed_images]
    seconds = _interleaved_seconds(
        {
            name: (lambda net=net: [_predict(net, image, baseline) for image in subset])
            for name, net in runners.items()
        },
        settings.rounds,
    )
    rows = []
    for name in runners:
        metrics, preds = scored[name]
        rows.append(
            Int8Row(
                name=name,
                miou=float(metrics.miou),
                context_iou=_context_iou(metrics),
                allacc=float(metrics.allacc),
                agreement_with_torch_fp32=_agreement(preds, torch_preds),
                images_per_s=len(subset) / seconds[name],
                speed_ratio=seconds["torch_fp32"] / seconds[name],
            )
        )
    return rows


def run_cpu_modes(
    settings: CpuModesSettings = CpuModesSettings(), json_path: Path | None = None
) -> CpuModesReport:
    """Run all three parts and return (and optionally write as JSON) the report."""
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    train_set, val_set, model, model_path = _demo_data_and_model(settings, notes)
    images, masks = [], []
    for index in range(len(val_set)):
        image, mask = val_set.load_raw(index)
        if mask is not None:
            images.append(image)
            masks.append(mask)
    report = CpuModesReport(
        settings={f.name: _plain(getattr(settings, f.name)) for f in fields(settings)},
        machine=_machine(),
        model_path=str(model_path),
        num_val_images=len(images),
        notes=notes,
    )
    report.modes, torch_preds = _demo_modes(model, images, masks, settings)
    report.large, report.large_matmul_peak_gflops = _large_modes(settings)
    if settings.int8:
        report.int8 = _int8(model, train_set, images, masks, torch_preds, settings)
    report.seconds = time.perf_counter() - start
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


# --- output ---------------------------------------------------------------------------------------


def format_report(report: CpuModesReport) -> str:
    """Markdown tables of the three parts, ready for docs/cpu_modes.md."""
    s = report.settings
    m = report.machine
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, AVX2 {m['avx2']}, AVX512-VNNI {m['avx512_vnni']}, "
        f"AVX-VNNI {m['avx_vnni']}, AMX {m['amx_int8']}; torch {m['torch']}"
        + (f", onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else "")
        + f"; {s['threads']} thread(s).",
        "",
        f"Demo benchmark: pspnet_tiny, {report.num_val_images} validation images of {s['size']}x{s['size']}; "
        f"speed over {min(s['speed_images'], report.num_val_images)} images, median of {s['rounds']} "
        "interleaved rounds, ratio to `os8` in the same run.",
        "",
        "| mode | what | mIoU | context-class IoU | agreement with os8 | GFLOPs/img | images/s | vs os8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.modes:
        lines.append(
            f"| `{r.name}` | {r.description} | {100 * r.miou:.2f} | {100 * r.context_iou:.2f} | "
            f"{100 * r.agreement_with_baseline:.2f}% | {r.gflops_per_image:.3g} | {r.images_per_s:.1f} | "
            f"{r.speed_ratio:.2f}x |"
        )
    if report.modes and report.modes[0].class_iou:
        names = list(report.modes[0].class_iou)
        lines += [
            "",
            "Per-class IoU:",
            "",
            "| mode | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for r in report.modes:
            lines.append(f"| `{r.name}` | " + " | ".join(f"{100 * r.class_iou[n]:.1f}" for n in names) + " |")
    lines += [
        "",
        f"{s['large_preset']} ({s['large_classes']} classes, random weights), one {s['large_size']}x"
        f"{s['large_size']} image, batch 1, whole image, median of {s['large_rounds']} interleaved rounds; "
        f"fp32 matmul (1024^3) at {report.large_matmul_peak_gflops:.0f} GFLOP/s in the same rounds:",
        "",
        "| mode | GFLOPs/img | median s | vs os8 | % of matmul peak |",
        "|---|---|---|---|---|",
    ]
    for r in report.large:
        lines.append(
            f"| `{r.name}` | {r.gflops_per_image:.4g} | {r.median_s:.3g} | {r.speed_ratio:.2f}x | "
            f"{r.percent_of_matmul_peak:.0f}% |"
        )
    if report.int8:
        lines += [
            "",
            "int8 on the demo model (OS8, no flip; calibrated on "
            f"{min(s['calibration_images'], s['num_train'])} demo train images):",
            "",
            "| runner | mIoU | context-class IoU | agreement with torch fp32 | images/s | vs torch fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for r in report.int8:
            lines.append(
                f"| `{r.name}` | {100 * r.miou:.2f} | {100 * r.context_iou:.2f} | "
                f"{100 * r.agreement_with_torch_fp32:.2f}% | {r.images_per_s:.1f} | {r.speed_ratio:.2f}x |"
            )
    lines += ["", *(f"- {note}" for note in report.notes), f"- total {report.seconds:.0f} s"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = CpuModesSettings()
    parser.add_argument("--model", type=Path, default=None, help="trained pspnet_tiny (default: train one)")
    parser.add_argument("--out-dir", type=Path, default=defaults.out_dir, help="model and ONNX files")
    parser.add_argument("--cache-dir", type=Path, default=defaults.cache_dir, help="generated demo data")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--speed-images", type=int, default=defaults.speed_images)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--large-preset", default=defaults.large_preset)
    parser.add_argument("--large-size", type=int, default=defaults.large_size)
    parser.add_argument("--large-rounds", type=int, default=defaults.large_rounds)
    parser.add_argument("--no-int8", action="store_true", help="skip the ONNX / int8 part")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = CpuModesSettings(
        out_dir=args.out_dir,
        cache_dir=args.cache_dir,
        model=args.model,
        speed_images=args.speed_images,
        rounds=args.rounds,
        large_preset=args.large_preset,
        large_size=args.large_size,
        large_rounds=args.large_rounds,
        int8=not args.no_int8,
        threads=args.threads,
        progress=not args.no_progress,
    )
    report = run_cpu_modes(settings, args.json)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
