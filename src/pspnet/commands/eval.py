"""``pspnet eval``: score a model on a dataset with the authors' test protocol."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pspnet.commands._options import add_amp_argument, resolve_amp_argument

NAME = "eval"
HELP = "evaluate a model (mIoU, mAcc, allAcc): whole image, sliding window, multi-scale + flip"
DESCRIPTION = (
    "Predicts every image of a dataset split with the authors' protocol (hszhao/semseg tool/test.py) and "
    "accumulates one confusion matrix over the whole split. Prints the per-class table and writes "
    "OUT/metrics.json (every number and the settings) and OUT/confusion.png. For the authors' datasets "
    "(VOC2012, Cityscapes, ADE20K) images are resized to the dataset's base size at scale 1.0, as the "
    "authors do; for folder and list datasets images are used at their own size unless --base-size is given. "
    "The authors' setting: --mode slide --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip (multi-scale). "
    "Cheaper modes, each a speed/accuracy trade with its cost measured in docs/cpu_modes.md: "
    "--output-stride 16, a single smaller --scales value, no --flip."
)

_OUTPUT_STRIDE_HELP = (
    "run the backbone at this output stride instead of the model's own (8 for the paper's models); "
    "same weights. A speed/accuracy trade: 16 does several times less work at a measured accuracy "
    "cost (docs/cpu_modes.md). Not for .onnx models, whose stride is fixed when exported"
)

_AUTHORS_DATASETS = ("voc2012", "cityscapes", "ade20k")


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
        "--kind", default="auto", help="auto | voc2012 | cityscapes | ade20k | folder | list (default auto)"
    )
    parser.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole", help="inference mode")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="scales (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument(
        "--crop-size", type=int, default=None, help="sliding-window crop (default: training crop)"
    )
    parser.add_argument(
        "--base-size", type=int, default=None, help="long side at scale 1.0 (default: see the description)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument(
        "--output-stride", type=int, choices=(8, 16, 32), default=None, help=_OUTPUT_STRIDE_HELP
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json and confusion.png here")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--boundary",
        action="store_true",
        help="also score object edges: per-class boundary F-score (docs/decoder.md)",
    )
    add_amp_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from pspnet.data.datasets import open_dataset
    from pspnet.engine.evaluate import evaluate
    from pspnet.io.checkpoint import open_model
    from pspnet.models.stride import at_output_stride

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = resolve_amp_argument(args.amp, device)
    model = open_model(args.model, map_location=device)
    if args.output_stride is not None:
        model = at_output_stride(model, args.output_stride, args.model)
    dataset = open_dataset(args.data, args.kind, args.split, num_classes=model.num_classes)
    model_info = model.dataset_info
    generic = all(name == f"class_{i}" for i, name in enumerate(dataset.info.class_names))
    if generic and model_info is not None and model_info.num_classes == dataset.info.num_classes:
        # A folder dataset without classes.txt: the model file knows the names and colours.
        dataset.info = dataclasses.replace(
            model_info, ignore_index=dataset.info.ignore_index, name=dataset.info.name
        )
    base_size = args.base_size
    if base_size is None and dataset.info.name in _AUTHORS_DATASETS:
        base_size = dataset.info.base_size
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
    result.settings["split"] = args.split
    if amp_dtype is not None:
        result.settings["amp"] = args.amp
    if args.output_stride is not None:
        result.settings["output_stride"] = args.output_stride
    print(result.format_table())
    if args.out is not None:
        json_path = result.to_json(args.out / "metrics.json")
        plot_path = result.save_confusion_plot(args.out / "confusion.png")
        print(f"wrote {json_path} and {plot_path}")
    return 0
