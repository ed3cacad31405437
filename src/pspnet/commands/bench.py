"""``pspnet bench``: inference variants, training step, loader and sliding-window timings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pspnet.commands._options import check_output_file, check_threads, resolve_device_argument

NAME = "bench"
HELP = "benchmark inference variants (and training, loading, sliding window) against eager fp32"
DESCRIPTION = (
    "Times each inference variant after warm-up and reports median latency with p10/p90, images/s, "
    "the speed-up over the eager fp32 model measured in the same run, FLOPs per image, achieved GFLOP/s "
    "as a fraction of a matmul peak measured in the same run, and peak memory. Random weights and "
    "inputs: speed does not depend on them. On a shared CPU only same-run ratios are meaningful. "
    "One progress line per variant goes to stderr as it starts and ends (--no-progress hides them)."
)


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x1024 (HxW), got {text!r}") from None
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pspnet.bench import ALL_VARIANTS, DEFAULT_VARIANTS

    parser.add_argument("--preset", default="pspnet50", help="model preset (default pspnet50)")
    parser.add_argument("--num-classes", type=int, default=19, help="output classes (default 19)")
    parser.add_argument(
        "--size", type=_size, nargs="+", default=[(512, 1024)], help="input sizes HxW (default 512x1024)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=ALL_VARIANTS,
        default=list(DEFAULT_VARIANTS),
        help="inference variants; eager_fp32 is always measured as the baseline "
        f"(default: {' '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (default 5)")
    parser.add_argument("--train", action="store_true", help="also time SGD training steps")
    parser.add_argument(
        "--loader",
        action="store_true",
        help="also time the training data loader (fused augmentation vs the step-by-step baseline)",
    )
    parser.add_argument(
        "--loader-workers", type=int, default=None, help="loader workers (default min(4, CPUs))"
    )
    parser.add_argument(
        "--train-compile", action="store_true", help="with --train: also the step with the model compiled"
    )
    parser.add_argument(
        "--slide",
        action="store_true",
        help="also time sliding-window eval of a 1024x2048 image (crop 713; --batch crops per forward)",
    )
    parser.add_argument("--slide-flip", action="store_true", help="the sliding-window run also flips")
    parser.add_argument(
        "--compile", action="store_true", help="add the torch.compile variant (slow to start)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads, >= 1 (default: torch's choice)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the report as JSON to this file (default: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-variant progress lines on stderr")


def _progress(line: str) -> None:
    print(f"pspnet bench: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from pspnet.bench import format_report, run_benchmark

    check_threads(args.threads)
    device = resolve_device_argument(args.device)
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = list(args.variants)
    if args.compile and "compile" not in variants:
        variants.append("compile")
    report = run_benchmark(
        args.preset,
        num_classes=args.num_classes,
        sizes=args.size,
        batch=args.batch,
        device=device,
        variants=variants,
        warmup=args.warmup,
        repeats=args.repeats,
        train=args.train,
        loader=args.loader,
        train_compile=args.train_compile,
        slide=args.slide,
        slide_flip=args.slide_flip,
        loader_workers=args.loader_workers,
        json_path=args.json,
        progress=None if args.no_progress else _progress,
    )
    print(format_report(report))
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0
