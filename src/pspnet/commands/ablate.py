"""``pspnet ablate``: the paper's Table 1 study on the built-in context benchmark."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from pspnet.ablate import ABLATIONS, format_table, run_ablation
from pspnet.commands._options import check_output_dir, check_output_file, check_threads
from pspnet.errors import InputError

NAME = "ablate"
HELP = "re-run the paper's Table 1 ablations (bins, pooling, reduction, aux) on the built-in benchmark"
DESCRIPTION = (
    "Trains one tiny model per variant (same data, schedule and seed) and prints our mIoU next to the "
    "paper's ADE20K numbers. Variants: " + ", ".join(a.name for a in ABLATIONS) + ". With the defaults "
    "each variant takes about as long as one model of 'pspnet demo' (about 100 s on 2 cores)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("pspnet_demo/data"),
        help="folder for the generated benchmark, shared with 'pspnet demo' (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default: %(default)s)")
    parser.add_argument(
        "--iterations", type=int, default=280, help="training iterations per variant (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="training batch, >= 2 (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=0.02, help="base learning rate (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=192, help="image size in pixels, >= 32 (default: %(default)s)"
    )
    parser.add_argument("--num-train", type=int, default=2000, help="training images (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=200, help="validation images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads, >= 1 (default: all cores)")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the rows as JSON to this file (default: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    from pspnet.data.synthetic import ensure_demo_data
    from pspnet.io.checkpoint import atomic_write

    # Everything is checked before any data is generated or any model trained (about 15 minutes).
    for name in ("iterations", "num_train", "num_val"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size < 2:
        raise InputError(f"--batch-size must be >= 2 (BatchNorm needs 2 samples), got {args.batch_size}")
    if args.size < 32:
        raise InputError(f"--size must be >= 32 pixels, got {args.size}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if not args.lr > 0:
        raise InputError(f"--lr must be > 0, got {args.lr}")
    check_threads(args.threads)
    unknown = sorted(set(args.variants or []) - {a.name for a in ABLATIONS})
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; available: {', '.join(a.name for a in ABLATIONS)}")
    check_output_dir(args.cache, "--cache")
    if args.json is not None:
        check_output_file(args.json, "--json")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    root = ensure_demo_data(
        args.cache,
        args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        progress=not args.no_progress,
    )
    rows = run_ablation(
        args.variants,
        data_root=str(root),
        iterations=args.iterations,
        batch_size=args.batch_size,
        base_lr=args.lr,
        seed=args.seed,
        size=args.size,
        progress=not args.no_progress,
    )
    print(format_table(rows))
    if args.json:
        data = [
            {**asdict(r.ablation), "miou": r.miou, "context_iou": r.context_iou, "seconds": r.seconds}
            for r in rows
        ]
        text = json.dumps(data, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"wrote {args.json}")
    return 0
