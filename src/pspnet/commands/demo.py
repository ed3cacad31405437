"""``pspnet demo``: the built-in context benchmark, FCN vs PSPNet, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from pspnet.commands._options import check_output_dir, check_threads
from pspnet.demo import DemoSettings, run_demo
from pspnet.errors import InputError

NAME = "demo"
HELP = "train FCN and PSPNet on the built-in context benchmark and write a comparison report"
DESCRIPTION = (
    "Generates the built-in context benchmark (no download), trains the dilated-FCN baseline and "
    "PSPNet with the same backbone, data and schedule, evaluates both and writes OUT/report.md with "
    "per-class IoU, training curves and example predictions. Defaults take about 4-5 minutes on 2 CPU "
    "cores; raise --iterations for a longer, better run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    parser.add_argument("--out", type=Path, default=d.out_dir, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="where the generated data lives (default: OUT/data)"
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="data and training seed (default: %(default)s)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=d.iterations,
        help="training iterations per model (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="training batch (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=d.base_lr, help="base learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=d.size, help="image size in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--num-train", type=int, default=d.num_train, help="training images (default: %(default)s)"
    )
    parser.add_argument(
        "--num-val", type=int, default=d.num_val, help="validation images (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads, >= 1 (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    for name in ("iterations", "batch_size", "size", "num_train", "num_val"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size < 2:
        raise InputError("--batch-size must be >= 2 (BatchNorm on the 1x1 pyramid bin needs 2 samples)")
    if args.size < 32:
        raise InputError(f"--size must be >= 32 pixels, got {args.size}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if not args.lr > 0:  # `not >` also refuses NaN
        raise InputError(f"--lr must be > 0, got {args.lr}")
    check_threads(args.threads)
    check_output_dir(args.out, "--out")
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    settings = DemoSettings(
        out_dir=args.out,
        cache_dir=args.cache,
        seed=args.seed,
        size=args.size,
        num_train=args.num_train,
        num_val=args.num_val,
        iterations=args.iterations,
        batch_size=args.batch_size,
        base_lr=args.lr,
        threads=args.threads,
        progress=not args.no_progress,
    )
    report = run_demo(settings)
    print(f"report: {report}")
    print(report.read_text().split("## Per-class IoU")[0].split("## Result")[1].strip())
    return 0
