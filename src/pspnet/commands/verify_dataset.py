"""``pspnet verify-dataset``: read every image/mask pair once, list problems, summarise labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pspnet.commands._options import add_mask_palette_argument, check_output_file
from pspnet.data.datasets import DATASET_KINDS, open_dataset
from pspnet.data.info import DATASETS, get_dataset_info
from pspnet.data.verify import verify_dataset
from pspnet.errors import InputError

NAME = "verify-dataset"
HELP = "check a dataset's images and masks before training (exit 1 when problems are found)"
DESCRIPTION = (
    "Reads every image/mask pair and reports unreadable files, size mismatches, label values "
    "outside [0, num_classes) (as stored in the files), RGB colour masks, JPEG masks, 0/255 binary "
    "masks, Cityscapes labelTrainIds saved as labelIds, missing pairs and duplicate stems; then prints "
    "the pixel count per class and the image sizes. Folder and list datasets take their classes from "
    "--dataset, else dataset.json (written by `pspnet make-demo-data`) or classes.txt beside the data, "
    "else --num-classes. A list file is one split: check the validation list by passing its path. "
    "Exit status 0 when clean, 1 when problems were found, 2 for usage errors."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(sorted(DATASETS))
    parser.add_argument("root", help="dataset folder (or list file for --kind list)")
    parser.add_argument(
        "--kind", default="auto", choices=DATASET_KINDS, help="dataset layout (default: detect)"
    )
    parser.add_argument(
        "--split", default="train", help="split to check (default: train; a list file is its own split)"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="class count for folder/list datasets")
    parser.add_argument(
        "--dataset", default=None, metavar="NAME", help=f"label space of a folder/list dataset ({names})"
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="label value that is not scored (default 255; only folder/list datasets may change it)",
    )
    add_mask_palette_argument(parser)
    parser.add_argument("--data-root", default=None, help="base folder of the paths in a list file")
    parser.add_argument("--max-files", type=int, default=None, help="check only the first N pairs")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT",
        help="also write the full report as JSON to this file (missing folders are created)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.max_files is not None and args.max_files < 1:
        raise InputError(f"--max-files must be >= 1, got {args.max_files}")
    if args.json is not None:  # before reading every file, not after
        check_output_file(args.json, "--json")
    info = None
    if args.dataset is not None:
        try:
            info = get_dataset_info(args.dataset)
        except ValueError as exc:
            raise InputError(f"--dataset: {exc}") from None
    dataset = open_dataset(
        args.root,
        kind=args.kind,
        split=args.split,
        info=info,
        num_classes=args.num_classes,
        data_root=args.data_root,
        mask_palette=args.mask_palette,
        ignore_index=args.ignore_index,
        strict=False,
    )
    report = verify_dataset(dataset, max_files=args.max_files, progress=not args.no_progress)
    print(report.format())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report.write_json(args.json)
    if not report.ok:
        print(f"pspnet verify-dataset: {len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    return 0
