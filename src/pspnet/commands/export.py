"""``pspnet export``: write a model as ONNX (dynamic batch/height/width) and verify it."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export a model to ONNX (dynamic batch and size) and verify it with onnxruntime"
DESCRIPTION = (
    "The ONNX graph takes 'input' (N, 3, H, W), already normalised, and returns 'out' logits "
    "(N, C, H, W). The preprocessing, config and class names are stored in the file's metadata so "
    "that pspnet.export.OnnxModel can run it alone. Adaptive pooling is rewritten to be exact at every "
    "size; the verification prints the max abs difference from PyTorch per size."
)


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 97x129 (HxW), got {text!r}") from None
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model file (.safetensors; import released .pth/.caffemodel files with 'pspnet convert' first)",
    )
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--out", required=True, type=Path, help="output file, e.g. model.onnx")
    parser.add_argument(
        "--opset", type=int, default=17, help="ONNX opset, 11 to the newest torch writes (default 17)"
    )
    parser.add_argument(
        "--static",
        action="store_true",
        help="fix batch 1 and the example size instead of dynamic axes; the model then runs only that "
        "size (pspnet predict/eval: --mode slide --crop-size SIZE for a square one)",
    )
    parser.add_argument(
        "--example-size", type=_size, default=(129, 129), help="tracing input size HxW (default 129x129)"
    )
    parser.add_argument(
        "--verify-sizes",
        type=_size,
        nargs="*",
        default=[(129, 129), (97, 129), (128, 160)],
        help="sizes HxW checked against PyTorch with onnxruntime (none: skip); with --static only the "
        "example size can be checked",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="max abs logit difference accepted (default 1e-3)"
    )


def run(args: argparse.Namespace) -> int:
    from pspnet.commands._options import check_output_file
    from pspnet.errors import InputError
    from pspnet.export import check_opset, export_onnx, verify_onnx
    from pspnet.io.checkpoint import load_model

    if args.model.suffix.lower() == ".onnx":
        raise InputError(f"{args.model}: already ONNX; pass the .safetensors model to export")
    check_opset(args.opset)  # before loading the model: a typo should not cost a load
    check_output_file(args.out, "--out")
    replaced = args.out.exists()
    model = load_model(args.model)
    path = export_onnx(
        model, args.out, opset=args.opset, dynamic=not args.static, example_size=tuple(args.example_size)
    )
    shape = "static" if args.static else "dynamic batch/height/width"
    print(f"wrote {path} (opset {args.opset}, {shape})" + (" (replaced the old file)" if replaced else ""))
    sizes = list(args.verify_sizes)
    if args.static and sizes:
        sizes = [tuple(args.example_size)]
    if sizes and {tuple(s) for s in args.verify_sizes} - set(sizes):
        example = "x".join(map(str, args.example_size))
        print(f"  note: a static model runs only its example size: verifying {example} only")
    if not sizes:
        return 0
    diffs = verify_onnx(model, path, sizes)
    worst = max(diffs.values())
    for (height, width), diff in diffs.items():
        print(f"  {height}x{width}: max abs diff {diff:.2e}")
    if worst > args.tolerance:
        print(f"verification FAILED: max abs diff {worst:.2e} > tolerance {args.tolerance:.0e}")
        return 1
    print(f"verification passed (max abs diff {worst:.2e} <= {args.tolerance:.0e})")
    return 0
