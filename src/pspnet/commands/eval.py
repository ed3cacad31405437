"""``pspnet eval``: score a model on a dataset with the authors' test protocol."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pspnet.commands._options import (
    add_inference_arguments,
    add_mask_palette_argument,
    check_inference_options,
    check_mask_palette,
    check_output_dir,
    resolve_amp_argument,
    resolve_device_argument,
)

NAME = "eval"
HELP = "evaluate a model (mIoU, mAcc, allAcc): whole image, sliding window, multi-scale + flip"
DESCRIPTION = (
    "Predicts every image of a dataset split with the authors' protocol (hszhao/semseg tool/test.py) and "
    "accumulates one confusion matrix over the whole split. Prints the per-class table and writes "
    "OUT/metrics.json (every number and the settings) and OUT/confusion.png. For the authors' datasets "
    "(VOC2012, Cityscapes, ADE20K) images are resized to the dataset's base size at scale 1.0, as the "
    "authors do; for folder and list datasets images are used at their own size unless --base-size is given. "
    "The authors' settings (their test.py always adds the flip): --mode slide --scales 1.0 --flip "
    "(single-scale) and --mode slide --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip (multi-scale); the "
    "default, --mode whole without flip, is the quick check, not their protocol. "
    "Cheaper modes, each a speed/accuracy trade with its cost measured in docs/cpu_modes.md: "
    "--output-stride 16, a single smaller --scales value, no --flip."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model file: .safetensors (from train/convert) or .onnx (from pspnet export)",
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="dataset root (or list file for --kind list)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="base folder of the relative paths in a list file (default: the list file's folder)",
    )
    parser.add_argument(
        "--kind", default="auto", help="auto | voc2012 | cityscapes | ade20k | folder | list (default auto)"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="dataset split (default val; a list file is one split, so --kind list takes none)",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="label value not scored, for folder and list datasets, never a class id (default: the one "
        "the model file records from training when not 255, else the data's dataset.json, else 255; the "
        "authors' layouts use 255)",
    )
    add_mask_palette_argument(parser)
    add_inference_arguments(
        parser,
        crop_help="sliding-window crop in pixels (default: the crop recorded in the model file, else the "
        "authors' crop for their datasets)",
        base_help="long side at scale 1.0 (default: see the description)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write metrics.json and confusion.png in this folder (default: none)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N images (default: all)"
    )
    parser.add_argument(
        "--boundary",
        action="store_true",
        help="also score object edges: per-class boundary F-score (docs/decoder.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from pspnet.data.datasets import detect_kind, open_dataset
    from pspnet.data.info import IGNORE_INDEX, has_placeholder_names
    from pspnet.engine.evaluate import class_names_note, evaluate, protocol_base_size
    from pspnet.errors import InputError
    from pspnet.io.checkpoint import open_model
    from pspnet.models.stride import at_output_stride

    # Every option is checked before the model and the data are loaded (and long before the
    # results are written), so a mistake costs nothing and is reported as the option's.
    check_inference_options(args)
    check_mask_palette(args.mask_palette)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    device = resolve_device_argument(args.device, args.model)
    amp_dtype = resolve_amp_argument(args.amp, device)
    is_list = args.kind == "list" or (args.kind == "auto" and args.data.is_file())
    if args.data_root is not None and not is_list:
        raise InputError(
            f"--data-root is only for list files (--kind list) and {args.data} is not one; "
            "leave --data-root out"
        )
    if args.split is not None and is_list:
        raise InputError(
            f"--split {args.split}: {args.data} is a list file, which is one split; leave --split out "
            "and pass the list file of the split to score"
        )
    if args.out is not None:
        check_output_dir(args.out, "--out")
    model = open_model(args.model, map_location=device)
    if args.output_stride is not None:
        model = at_output_stride(model, args.output_stride, args.model)
    model.to(device)  # an .onnx model ignores map_location; moved, it runs on onnxruntime's CUDA provider
    split = args.split or ("train" if is_list else "val")  # open_dataset's convention: a list is "train"
    kind = detect_kind(args.data) if args.kind == "auto" else args.kind
    model_info = model.dataset_info
    ignore_index = args.ignore_index
    trained = model_info.ignore_index if model_info is not None else IGNORE_INDEX
    if ignore_index is None and kind in ("folder", "list") and trained != IGNORE_INDEX:
        # The ignore value the model was trained with, so eval scores the pixels that training's
        # validation did (its val_miou) without repeating the option. Only a value chosen on
        # purpose: with 255, every model's default, the data's own (dataset.json) is kept.
        ignore_index = trained
        print(
            f"note: ignore index {trained}, as the model was trained with (--ignore-index to change)",
            file=sys.stderr,
        )
    dataset = open_dataset(
        args.data,
        kind,
        split,
        num_classes=model.num_classes,
        ignore_index=ignore_index,
        data_root=args.data_root,
        mask_palette=args.mask_palette,
    )
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    if (
        has_placeholder_names(dataset.info.class_names)
        and model_info is not None
        and model_info.num_classes == dataset.info.num_classes
    ):
        # A folder dataset without classes.txt: the model file knows the names and colours.
        dataset.info = dataclasses.replace(
            model_info, ignore_index=dataset.info.ignore_index, name=dataset.info.name
        )
    elif model_info is not None:
        source = _class_names_source(dataset)
        note = class_names_note(dataset.info.class_names, model_info.class_names, source)
        if note is not None:
            print(note, file=sys.stderr)
    base_size = args.base_size if args.base_size is not None else protocol_base_size(dataset)
    if base_size is None and is_list:
        _note_authors_base_size(dataset.info, model_info)
    result = evaluate(
        model,
        dataset,
        mode=args.mode,
        crop_size=args.crop_size,
        scales=tuple(args.scales),
        base_size=base_size,
        flip=args.flip,
        progress=not args.no_progress,
        batch_size=args.batch_size,
        limit=args.limit,
        boundary=args.boundary,
        amp_dtype=amp_dtype,
    )
    result.settings["model"] = str(args.model)
    result.settings["data"] = str(args.data)
    if args.data_root is not None:
        result.settings["data_root"] = str(args.data_root)
    result.settings["split"] = None if is_list else split
    if amp_dtype is not None:
        result.settings["amp"] = args.amp
    if args.output_stride is not None:
        result.settings["output_stride"] = args.output_stride
    print(result.format_table())
    if args.out is not None:
        targets = (args.out / "metrics.json", args.out / "confusion.png")
        replaced = sum(path.exists() for path in targets)
        json_path = result.to_json(targets[0])
        plot_path = result.save_confusion_plot(targets[1])
        said = {0: "", 1: " (replaced the old file)", 2: " (replaced the old files)"}[replaced]
        print(f"wrote {json_path} and {plot_path}{said}")
    return 0


def _class_names_source(dataset: Any) -> str:
    """Where the dataset's class names came from, for a message: the ``dataset.json`` /
    ``classes.txt`` that ``open_dataset`` read, else the authors' layout itself."""
    if dataset.class_names_file is not None:
        return str(dataset.class_names_file)
    if dataset.kind in ("folder", "list"):
        return f"the dataset {dataset.root}"
    return f"the {dataset.kind} layout"


def _note_authors_base_size(*infos: Any) -> None:
    """The authors' list files are their datasets, which they evaluate at a fixed base size; a list
    file is evaluated at each image's own size, so say once how to get their protocol."""
    from pspnet.data.info import get_dataset_info

    for info in infos:
        name = getattr(info, "name", None)
        if name in ("voc2012", "cityscapes", "ade20k"):
            base = get_dataset_info(name).base_size
            print(
                f"note: list data is evaluated at each image's own size; the authors' {name} protocol "
                f"resizes the long side to {base}: add --base-size {base}",
                file=sys.stderr,
            )
            return
