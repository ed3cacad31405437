"""``pspnet predict``: label PNGs, overlays and confidence maps for images, folders and globs."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from pspnet.commands._options import (
    add_inference_arguments,
    check_inference_options,
    check_output_dir,
    resolve_amp_argument,
    resolve_device_argument,
)

NAME = "predict"
HELP = "segment images: label PNGs (values = class ids), colour overlays, confidence maps"
DESCRIPTION = (
    "INPUTS are image files, folders (their images, sorted) or quoted glob patterns. For each image "
    "writes OUT/<stem>.png (palette PNG whose pixel values are the class ids; 16-bit grey above 256 "
    "classes), OUT/<stem>_overlay.jpg and, with --confidence, OUT/<stem>_confidence.png (max probability "
    "x 255), all at the input size. An unreadable input is reported on stderr and skipped; the exit "
    "status is then 1. An --out that would overwrite one of the inputs is refused before any work."
)

_GLOB_CHARS = frozenset("*?[")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model", required=True, type=Path, help="model file: .safetensors or .onnx (from pspnet export)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    add_inference_arguments(
        parser,
        crop_help="sliding-window crop in pixels (default: the crop recorded in the model file)",
        base_help="long side at scale 1.0 (default: each image's own long side, at every scale); "
        "the authors' protocol resizes to the dataset's base size (512 VOC/ADE20K, 2048 Cityscapes)",
    )
    parser.add_argument(
        "--overlay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <stem>_overlay.jpg (default: on)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the colours (default 0.5)"
    )
    parser.add_argument("--confidence", action="store_true", help="also write <stem>_confidence.png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files to process (in order, duplicates dropped) and the inputs that matched nothing."""
    from pspnet.data.imageio import IMAGE_EXTENSIONS

    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():
            found = [path]
        elif _GLOB_CHARS & set(item):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        else:
            found = []
        if not found:
            missing.append(item)
        files.extend(found)
    unique = list(dict.fromkeys(files))
    return unique, missing


def _check_stems(files: list[Path]) -> None:
    from pspnet.errors import InputError

    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise InputError(
                f"{seen[path.stem]} and {path} would both write {path.stem}.png; rename one or predict them "
                "into different --out folders"
            )
        seen[path.stem] = path


def _output_names(stem: str, overlay: bool, confidence: bool) -> list[str]:
    """The file names ``pspnet predict`` writes for an input with this stem."""
    names = [f"{stem}.png"]
    if overlay:
        names.append(f"{stem}_overlay.jpg")
    if confidence:
        names.append(f"{stem}_confidence.png")
    return names


def _check_inputs_survive(files: list[Path], out: Path, overlay: bool, confidence: bool) -> None:
    """Refuse an ``--out`` where an output would overwrite an input (e.g. ``--out`` = the input folder).

    Paths are compared resolved, so ``.``, ``..`` and symbolic links cannot hide a collision.
    """
    from pspnet.errors import InputError

    inputs = {path.resolve(): path for path in files}
    for path in files:
        for name in _output_names(path.stem, overlay, confidence):
            target = (out / name).resolve()
            if target in inputs:
                whose = "its own prediction" if inputs[target] == path else f"the prediction of {path}"
                raise InputError(
                    f"--out {out} would overwrite the input {inputs[target]} with {whose}; "
                    "choose another --out folder"
                )


def run(args: argparse.Namespace) -> int:
    from pspnet.data.info import default_palette
    from pspnet.errors import DataError, InputError
    from pspnet.io.checkpoint import open_model
    from pspnet.models.stride import at_output_stride
    from pspnet.prediction import load_image, predict
    from pspnet.viz import overlay, save_confidence_png, save_image, save_label_png

    files, missing = expand_inputs(args.inputs)
    if not files:
        raise InputError(f"no images found in {' '.join(args.inputs)} (no such file, or no images in it)")
    for item in missing:
        print(f"pspnet predict: {item}: no such file, or no images in it; skipped", file=sys.stderr)
    _check_stems(files)
    # Options are checked once, before the model is loaded: not once per image.
    check_inference_options(args)
    if not 0 <= args.alpha <= 1:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    device = resolve_device_argument(args.device, args.model)
    amp_dtype = resolve_amp_argument(args.amp, device)
    check_output_dir(args.out, "--out")
    _check_inputs_survive(files, args.out, args.overlay, args.confidence)
    model = open_model(args.model, map_location=device)
    if args.output_stride is not None:
        model = at_output_stride(model, args.output_stride, args.model)
    model.to(device)  # an .onnx model ignores map_location; moved, it runs on onnxruntime's CUDA provider
    info = model.dataset_info
    palette = info.palette if info is not None else default_palette(model.num_classes)
    if args.mode == "slide" and args.crop_size is None and info is None:
        # Checked once here rather than failing identically for every image.
        raise InputError(f"--mode slide needs --crop-size: {args.model} records no training crop size")

    iterator: object = files
    write = print
    if not args.no_progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="predict", unit="img", dynamic_ncols=True)
        write = tqdm.write
    failed = len(missing)
    done = 0
    for path in iterator:  # type: ignore[attr-defined]
        try:
            image = load_image(path)
        except DataError as exc:
            write(f"pspnet predict: skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            result = predict(
                model,
                image,
                mode=args.mode,
                crop_size=args.crop_size,
                scales=tuple(args.scales),
                base_size=args.base_size,
                flip=args.flip,
                batch_size=args.batch_size,
                return_confidence=args.confidence,
                amp_dtype=amp_dtype,
            )
        except ValueError as exc:  # e.g. an image smaller than the network's minimum input
            write(f"pspnet predict: skipped: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        written: list[Path] = []
        try:
            written.append(save_label_png(args.out / f"{path.stem}.png", result.labels, palette))
            if args.overlay:
                blended = overlay(image, result.labels, palette, alpha=args.alpha)
                written.append(save_image(args.out / f"{path.stem}_overlay.jpg", blended))
            if args.confidence and result.confidence is not None:
                written.append(
                    save_confidence_png(args.out / f"{path.stem}_confidence.png", result.confidence)
                )
        except BaseException:
            for item in written:  # all outputs of an image or none of them
                item.unlink(missing_ok=True)
            raise
        done += 1
    if done:
        print(f"wrote {done} prediction(s) to {args.out}" + (f"; {failed} input(s) failed" if failed else ""))
    else:  # nothing was written, and --out may not even exist: say so rather than "wrote 0"
        print(f"no prediction written: all {failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
