"""``pspnet convert``: import released weights into a pspnet safetensors file."""

from __future__ import annotations

import argparse

from pspnet.io.convert import convert_checkpoint

NAME = "convert"
HELP = "import released weights (authors' PyTorch .pth) into a pspnet .safetensors file"
DESCRIPTION = (
    "Convert a released checkpoint. The file is read with torch.load(weights_only=True) only: a "
    "checkpoint that would need arbitrary code execution to unpickle is refused. Example: "
    "pspnet convert train_epoch_100.pth pspnet50_ade20k.safetensors --preset pspnet50_ade20k"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to import (hszhao/semseg train_epoch_*.pth)")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--source", default="semseg", choices=["semseg"], help="where the weights come from")
    parser.add_argument(
        "--preset",
        default=None,
        help="preset giving the label space and preprocessing, e.g. pspnet50_ade20k (see 'pspnet models')",
    )
    parser.add_argument(
        "--bins", type=int, nargs="+", default=[1, 2, 3, 6], help="pyramid bins the weights were trained with"
    )


def run(args: argparse.Namespace) -> int:
    result = convert_checkpoint(
        args.src, args.dst, source=args.source, preset=args.preset, bins=tuple(args.bins)
    )
    cfg = result.model.config
    print(f"converted {args.src} -> {result.path}")
    print(f"  model: {result.model.preset_name} (ResNet-{cfg.depth}, {cfg.num_classes} classes)")
    print(f"  {result.report.summary()}")
    return 0
