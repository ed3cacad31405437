"""``pspnet make-demo-data``: write the built-in context benchmark to a folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "make-demo-data"
HELP = "generate the synthetic context benchmark (boat vs car, pier vs sidewalk) used by `pspnet demo`"
DESCRIPTION = (
    "Writes DIR/images/{train,val}/NNNNN.png, DIR/masks/{train,val}/NNNNN.png (single-channel label ids) and "
    "DIR/dataset.json (the label space, read by `pspnet verify-dataset DIR` and any folder dataset). "
    "Boats and cars (piers and sidewalks) look identical; which one an object is depends "
    "on whether water or road covers more of the image, so only global context decides. The same seed "
    "always gives the same bytes. DIR is replaced only if it holds an earlier generated benchmark (its "
    "dataset.json) or is empty; other files in it are kept."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        type=Path,
        help="output folder: new, empty, or a benchmark written by make-demo-data before (replaced); "
        "any other folder or file is refused",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--num-train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--num-val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--size", type=int, default=192, help="square image side in pixels (default 192)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 4 cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from pspnet.data.synthetic import make_demo_data

    start = time.perf_counter()
    root = make_demo_data(
        args.dir,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    count = f"{args.num_train} train + {args.num_val} val images ({args.size} px)"
    print(f"wrote {count} to {root} in {seconds:.1f}s")
    return 0
