"""``pspnet convert``: import released weights into a pspnet safetensors file."""

from __future__ import annotations

import argparse

from pspnet.io.convert import SOURCES, convert_checkpoint

NAME = "convert"
HELP = "import released weights (authors' PyTorch/Caffe, MMSegmentation) into a pspnet .safetensors file"
DESCRIPTION = (
    "Convert a released PSPNet checkpoint: the authors' PyTorch release (semseg, train_epoch_*.pth), "
    "MMSegmentation PSPNet checkpoints (mmseg), or the authors' Caffe models (caffe, .caffemodel). "
    "Torch files are read with torch.load(weights_only=True) only: a checkpoint that would need "
    "arbitrary code execution to unpickle is refused. Bookkeeping objects of training libraries "
    "pickled next to the weights (MMSegmentation 1.x / mmengine message_hub, numpy scalars) are "
    "skipped without importing or running their code, and named in a note. Caffe files are parsed "
    "as protobuf data, without Caffe. Example: "
    "pspnet convert train_epoch_100.pth pspnet50_ade20k.safetensors --preset pspnet50_ade20k"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to import (.pth or .caffemodel)")
    parser.add_argument("dst", help="output path, ending in .safetensors (not SRC itself)")
    parser.add_argument(
        "--source",
        default="auto",
        choices=["auto", *SOURCES],
        help="where the weights come from (default: auto, by file name and key names)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="preset giving the label space and preprocessing, e.g. pspnet50_ade20k (see 'pspnet models')",
    )
    parser.add_argument(
        "--bins", type=int, nargs="+", default=[1, 2, 3, 6], help="pyramid bins the weights were trained with"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pspnet.commands._options import check_output_file

    dst = Path(args.dst)
    check_output_file(dst, "DST")
    replaced = dst.exists()
    result = convert_checkpoint(
        args.src, args.dst, source=args.source, preset=args.preset, bins=tuple(args.bins)
    )
    cfg = result.model.config
    print(
        f"converted {args.src} ({result.source}) -> {result.path}"
        + (" (replaced the old file)" if replaced else "")
    )
    print(f"  model: {result.model.preset_name} (ResNet-{cfg.depth}, {cfg.num_classes} classes)")
    print(f"  {result.report.summary()}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
