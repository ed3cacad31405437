"""``pspnet ablate``: the paper's Table 1 study on the built-in context benchmark."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from pspnet.ablate import ABLATIONS, format_table, run_ablation

NAME = "ablate"
HELP = "re-run the paper's Table 1 ablations (bins, pooling, reduction, aux) on the built-in benchmark"
DESCRIPTION = (
    "Trains one tiny model per variant (same data, schedule and seed) and prints our mIoU next to the "
    "paper's ADE20K numbers. Variants: " + ", ".join(a.name for a in ABLATIONS) + ". With the defaults "
    "each variant takes about as long as one model of 'pspnet demo' (about 100 s on 2 cores)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")
    parser.add_argument("--cache", type=Path, default=Path("pspnet_demo/data"), help="benchmark data folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=280)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pspnet.data.synthetic import ensure_demo_data

    if args.batch_size < 2 or args.iterations < 1:
        raise ValueError("--batch-size must be >= 2 and --iterations >= 1")
    unknown = sorted(set(args.variants or []) - {a.name for a in ABLATIONS})
    if unknown:  # before generating any data
        raise ValueError(f"unknown variant(s) {unknown}; available: {', '.join(a.name for a in ABLATIONS)}")
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
        args.json.write_text(json.dumps(data, indent=2))
    return 0
