"""``pspnet verify-dataset``: read every image/mask pair once, list problems, summarise labels."""

from __future__ import annotations

import argparse
import sys

from pspnet.data.datasets import DATASET_KINDS, open_dataset
from pspnet.data.verify import verify_dataset

NAME = "verify-dataset"
HELP = "check a dataset's images and masks before training (exit 1 when problems are found)"
DESCRIPTION = (
    "Reads every image/mask pair and reports unreadable files, size mismatches, label values "
    "outside [0, num_classes), RGB colour masks, 0/255 binary masks, missing pairs and duplicate "
    "stems; then prints the pixel count per class and the image sizes. Exit status 0 when clean, "
    "1 when problems were found, 2 for usage errors."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="dataset folder (or list file for --kind list)")
    parser.add_argument(
        "--kind", default="auto", choices=DATASET_KINDS, help="dataset layout (default: detect)"
    )
    parser.add_argument("--split", default="train", help="split to check (default: train)")
    parser.add_argument("--num-classes", type=int, default=None, help="class count for folder/list datasets")
    parser.add_argument("--data-root", default=None, help="base folder of the paths in a list file")
    parser.add_argument("--max-files", type=int, default=None, help="check only the first N pairs")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the full report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"--max-files must be >= 1, got {args.max_files}")
    dataset = open_dataset(
        args.root,
        kind=args.kind,
        split=args.split,
        num_classes=args.num_classes,
        data_root=args.data_root,
        strict=False,
    )
    report = verify_dataset(dataset, max_files=args.max_files, progress=not args.no_progress)
    print(report.format())
    if args.json:
        report.write_json(args.json)
    if not report.ok:
        print(f"pspnet verify-dataset: {len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    return 0
