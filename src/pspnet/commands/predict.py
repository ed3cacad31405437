"""``pspnet predict``: label PNGs, overlays and confidence maps for images, folders and globs."""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pspnet.commands._options import (
    add_inference_arguments,
    check_inference_options,
    check_output_dir,
    resolve_amp_argument,
    resolve_device_argument,
)

__all__ = ["Expansion", "FolderScan", "InputImage", "add_arguments", "expand_inputs", "run"]

NAME = "predict"
HELP = "segment images: label PNGs (values = class ids), colour overlays, confidence maps"
DESCRIPTION = (
    "INPUTS are image files, folders (their images by suffix, sorted; with --recursive also those of their "
    "sub-folders) or quoted glob patterns ('**' matches any depth). Names starting with '.' in a folder "
    "(macOS ._* files, .DS_Store) are skipped; sub-folders, files of other suffixes and broken links that "
    "are skipped are counted in a note. For each image writes OUT/<stem>.png (palette PNG whose pixel "
    "values are the class ids; 16-bit grey above 256 classes), OUT/<stem>_overlay.jpg and, with "
    "--confidence, OUT/<stem>_confidence.png (max probability x 255), all at the input size; with "
    "--recursive under OUT/<sub-folder>/, mirroring the input tree. An image's outputs are one set from "
    "one run: an earlier run's overlay or confidence map that this run does not write is removed, and an "
    "image interrupted while its outputs are written keeps a complete set or none. An unreadable input "
    "is reported on stderr and skipped; the exit status is then 1. Inputs whose outputs would share a "
    "name, and an --out that would overwrite one of the inputs, are refused before any work."
)

_GLOB_CHARS = frozenset("*?[")
_MAX_LISTED = 5
_NOTHING_FOUND = "no such file, or no images in it"
# Python spellings of predict()'s parameters in a library message, and the option that says it on the CLI.
_API_SPELLING = re.compile(r"\b(mode|crop_size|base_size|batch_size|scales|flip)=(['\"]?)([\w.]+)\2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model", required=True, type=Path, help="model file: .safetensors or .onnx (from pspnet export)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--recursive",
        "-r",
        action="store_true",
        help="also search the sub-folders of folder inputs; outputs mirror the input tree under --out "
        "(same-named images in different sub-folders do not collide)",
    )
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


@dataclass(frozen=True)
class InputImage:
    """One image to predict, and the folder under ``--out`` that receives its outputs.

    ``tree_dir`` is where the image sits below the folder (or the fixed part of the glob) it came
    from; ``out_dir`` is ``tree_dir`` with ``--recursive`` and ``--out`` itself otherwise, so the flat
    layout of a plain run does not change.
    """

    path: Path
    out_dir: Path = Path()
    tree_dir: Path = Path()


@dataclass
class FolderScan:
    """What listing one folder input passed over, so the user hears about it once."""

    folder: Path
    recursive: bool
    subfolders: int = 0
    """Sub-folders holding images, not searched (without ``--recursive``)."""
    other_suffixes: Counter[str] = field(default_factory=Counter)
    """Suffixes (lower case, "" for none) of the files that are not images by suffix, with counts."""
    broken_links: list[Path] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per kind of skipped entry (nothing when nothing was skipped)."""
        where = f"{self.folder} and its sub-folders" if self.recursive else str(self.folder)
        notes = []
        if self.subfolders:
            notes.append(
                f"note: skipped {self.subfolders} sub-folder(s) of {self.folder} "
                "(not searched; pass --recursive)"
            )
        if self.other_suffixes:
            notes.append(
                f"note: skipped {sum(self.other_suffixes.values())} file(s) in {where} that are not images "
                f"by suffix ({self.suffix_list()}); give a file by name to read it anyway"
            )
        if self.broken_links:
            notes.append(
                f"note: skipped {len(self.broken_links)} broken symbolic link(s) in {where} (the file they "
                f"point to does not exist): {_listed(str(p) for p in self.broken_links)}"
            )
        return notes

    def suffix_list(self) -> str:
        ranked = sorted(self.other_suffixes.items(), key=lambda item: (-item[1], item[0]))
        return _listed(suffix or "no suffix" for suffix, _ in ranked)

    def why_empty(self) -> str:
        """Why this folder gave no image, for the error or the "skipped" line."""
        if not (self.subfolders or self.other_suffixes or self.broken_links):
            return _NOTHING_FOUND
        parts = ["no image files in this folder"]
        if self.subfolders:
            parts.append(
                f"its {self.subfolders} sub-folder(s) with images are not searched: pass --recursive"
            )
        if self.other_suffixes:
            parts.append(
                f"{sum(self.other_suffixes.values())} file(s) are not images by suffix ({self.suffix_list()})"
            )
        if self.broken_links:
            parts.append(f"{len(self.broken_links)} broken symbolic link(s)")
        return "; ".join(parts)


@dataclass
class Expansion:
    """The images that ``INPUTS`` name, in order, and what was passed over."""

    images: list[InputImage]
    missing: list[str]
    """Inputs that gave no image (no such file, an empty folder, a glob that matches nothing)."""
    scans: dict[str, FolderScan]
    """The listing of each folder input, by the input as given."""

    def why_missing(self, item: str) -> str:
        scan = self.scans.get(item)
        return scan.why_empty() if scan is not None else _NOTHING_FOUND


def _listed(items: Iterable[str]) -> str:
    values = list(items)
    return ", ".join(values[:_MAX_LISTED]) + (", ..." if len(values) > _MAX_LISTED else "")


def _is_image_name(name: str) -> bool:
    from pspnet.data.imageio import IMAGE_EXTENSIONS

    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    """The visible entries of a folder, sorted by name: names starting with '.' are skipped (as by
    Python's glob and ``ls``): macOS' ``._*`` AppleDouble files next to every image on a FAT/exFAT/SMB
    copy and ``.DS_Store`` are metadata, not images."""
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _contains_images(folder: Path, exclude: set[Path]) -> bool:
    """Whether ``folder`` or any visible sub-folder holds a file with an image suffix (stops at the first)."""
    pending, seen = [folder], set()
    while pending:
        directory = pending.pop()
        real = directory.resolve()
        if real in seen or real in exclude:
            continue
        seen.add(real)
        try:
            entries = _listing(directory)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                pending.append(directory / entry.name)
            elif entry.is_file() and _is_image_name(entry.name):
                return True
    return False


def _scan_folder(folder: Path, recursive: bool, exclude: set[Path]) -> tuple[list[InputImage], FolderScan]:
    """The images of a folder input (and of its sub-folders with ``recursive``), sorted by path.

    Symbolic links to folders are followed, each real folder once (a link to an ancestor cannot
    loop). ``exclude`` (the resolved ``--out``) is not searched when it lies inside ``folder``: a
    second run must not predict the first run's outputs.
    """
    scan = FolderScan(folder, recursive)
    images: list[InputImage] = []
    pending: list[tuple[Path, Path]] = [(folder, Path())]
    seen: set[Path] = set()
    while pending:
        directory, tree_dir = pending.pop()
        real = directory.resolve()
        if real in seen or (real in exclude and directory != folder):
            continue
        seen.add(real)
        for entry in _listing(directory):
            path = directory / entry.name
            if entry.is_dir():
                if recursive:
                    pending.append((path, tree_dir / entry.name))
                elif path.resolve() not in exclude and _contains_images(path, exclude):
                    scan.subfolders += 1
            elif entry.is_file():
                if _is_image_name(entry.name):
                    images.append(InputImage(path, tree_dir if recursive else Path(), tree_dir))
                else:
                    scan.other_suffixes[path.suffix.lower()] += 1
            elif entry.is_symlink():  # neither file nor folder: its target does not exist
                scan.broken_links.append(path)
    images.sort(key=lambda image: (*image.tree_dir.parts, image.path.name))
    return images, scan


def _glob_base(pattern: str) -> Path:
    """The fixed leading folders of a glob pattern: ``photos`` for ``photos/**/*.jpg``."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def expand_inputs(inputs: list[str], *, recursive: bool = False, out: Path | None = None) -> Expansion:
    """The images ``inputs`` name, in order, each file once.

    A folder gives its files with an image suffix (see ``IMAGE_EXTENSIONS``), sorted; with
    ``recursive`` those of its sub-folders too, each with its place in the tree. A glob pattern
    is matched with ``recursive=True`` (``**`` spans folders) and gives every file it matches; a
    file given by name is read whatever its suffix or name. ``out`` is the output folder, never
    searched when it lies inside a folder input.
    """
    exclude = {out.resolve()} if out is not None else set()
    images: list[InputImage] = []
    missing: list[str] = []
    scans: dict[str, FolderScan] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, scans[item] = _scan_folder(path, recursive, exclude)
        elif path.exists():
            found = [InputImage(path)]
        elif _GLOB_CHARS & set(item):
            base = _glob_base(item)
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                if Path(match).is_file():
                    tree_dir = Path(os.path.relpath(Path(match).parent, base))
                    if ".." in tree_dir.parts:  # 'a/*/../../*.png': never write outside --out
                        tree_dir = Path()
                    found.append(InputImage(Path(match), tree_dir if recursive else Path(), tree_dir))
        else:
            found = []
        if not found:
            missing.append(item)
        images.extend(found)
    unique: dict[Path, InputImage] = {}
    for image in images:  # a file named twice (by a folder and a glob, as ./a.jpg and a.jpg) once
        unique.setdefault(image.path, image)
    return Expansion(list(unique.values()), missing, scans)


def _output_names(stem: str, overlay: bool, confidence: bool) -> list[str]:
    """The file names ``pspnet predict`` writes for an input with this stem."""
    names = [f"{stem}.png"]
    if overlay:
        names.append(f"{stem}_overlay.jpg")
    if confidence:
        names.append(f"{stem}_confidence.png")
    return names


def _outputs(image: InputImage, out: Path, overlay: bool, confidence: bool) -> list[Path]:
    return [out / image.out_dir / name for name in _output_names(image.path.stem, overlay, confidence)]


def _check_output_names(images: list[InputImage], out: Path, overlay: bool, confidence: bool) -> None:
    """Refuse inputs whose outputs share a file name, before any work.

    Every output counts, not only the label PNG: with ``--confidence`` the label PNG of
    ``a_confidence.jpg`` is the confidence map of ``a.jpg``, and one would silently replace the other.
    """
    from pspnet.errors import InputError

    writer: dict[Path, InputImage] = {}
    for image in images:
        for target in _outputs(image, out, overlay, confidence):
            other = writer.setdefault(target, image)
            if other is image:
                continue
            hint = ""
            if other.out_dir == image.out_dir and other.tree_dir != image.tree_dir:
                hint = ", or pass --recursive to mirror their folders under --out"
            raise InputError(
                f"{other.path} and {image.path} would both write {target}; rename one or predict them into "
                f"different --out folders{hint}"
            )


def _check_inputs_survive(images: list[InputImage], out: Path, overlay: bool, confidence: bool) -> None:
    """Refuse an ``--out`` where an output would overwrite an input (e.g. ``--out`` = the input folder).

    Paths are compared resolved, so ``.``, ``..`` and symbolic links cannot hide a collision.
    """
    from pspnet.errors import InputError

    inputs = {image.path.resolve(): image.path for image in images}
    for image in images:
        for target in _outputs(image, out, overlay, confidence):
            overwritten = inputs.get(target.resolve())
            if overwritten is not None:
                whose = (
                    "its own prediction" if overwritten == image.path else f"the prediction of {image.path}"
                )
                raise InputError(
                    f"--out {out} would overwrite the input {overwritten} with {whose}; "
                    "choose another --out folder"
                )


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), or None: a replaced file is a new inode (atomic rename)."""
    try:
        stat = os.lstat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _remove(paths: list[Path], *, quiet: bool = False) -> int:
    """Delete the files that exist; how many were deleted. ``quiet``: ignore any failure (clean-up
    while another exception propagates, which must not be masked)."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            if quiet:
                continue
            raise
        removed += 1
    return removed


def _cli_wording(message: str) -> str:
    """A library message as the CLI user needs it: ``mode='slide'`` becomes ``--mode slide``,
    unless the message already names the option as the command line spells it."""

    def option(match: re.Match[str]) -> str:
        flag = f"--{match[1].replace('_', '-')}"
        return match[0] if flag in message else f"{flag} {match[3]}"

    return _API_SPELLING.sub(option, message)


def run(args: argparse.Namespace) -> int:
    from pspnet.data.info import default_palette
    from pspnet.errors import DataError, InputError
    from pspnet.io.checkpoint import open_model
    from pspnet.models.stride import at_output_stride
    from pspnet.prediction import load_image, predict
    from pspnet.viz import overlay, save_confidence_png, save_image, save_label_png

    expansion = expand_inputs(args.inputs, recursive=args.recursive, out=args.out)
    images, missing = expansion.images, expansion.missing
    if not images:
        raise InputError(
            "no images found in " + "; ".join(f"{item} ({expansion.why_missing(item)})" for item in missing)
        )
    for item in missing:
        print(f"pspnet predict: {item}: {expansion.why_missing(item)}; skipped", file=sys.stderr)
    for item, scan in expansion.scans.items():
        if item not in missing:
            for note in scan.notes():
                print(f"pspnet predict: {note}", file=sys.stderr)
    _check_output_names(images, args.out, args.overlay, args.confidence)
    # Options are checked once, before the model is loaded: not once per image.
    check_inference_options(args)
    if not 0 <= args.alpha <= 1:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    device = resolve_device_argument(args.device, args.model)
    amp_dtype = resolve_amp_argument(args.amp, device)
    check_output_dir(args.out, "--out")
    _check_inputs_survive(images, args.out, args.overlay, args.confidence)
    model = open_model(args.model, map_location=device)
    if args.output_stride is not None:
        model = at_output_stride(model, args.output_stride, args.model)
    model.to(device)  # an .onnx model ignores map_location; moved, it runs on onnxruntime's CUDA provider
    info = model.dataset_info
    palette = info.palette if info is not None else default_palette(model.num_classes)
    if args.mode == "slide" and args.crop_size is None and info is None:
        # Checked once here rather than failing identically for every image.
        raise InputError(f"--mode slide needs --crop-size: {args.model} records no training crop size")
    # A companion name that this run writes for another image, or that is an input (--out = the input
    # folder), is never "stale".
    planned = {
        target for image in images for target in _outputs(image, args.out, args.overlay, args.confidence)
    }
    inputs = {image.path.resolve() for image in images}

    iterator: object = images
    write = print
    if not args.no_progress:
        from tqdm import tqdm

        iterator = tqdm(images, desc="predict", unit="img", dynamic_ncols=True)
        write = tqdm.write
    failed = len(missing)
    done = replaced = removed = 0
    for item in iterator:  # type: ignore[attr-defined]
        path: Path = item.path
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
            write(f"pspnet predict: skipped: {path}: {_cli_wording(str(exc))}", file=sys.stderr)
            failed += 1
            continue
        targets = _outputs(item, args.out, args.overlay, args.confidence)
        # An earlier run's overlay / confidence map that this run does not write would sit beside the
        # new label PNG, a mix of two runs that nothing tells apart: it goes with the image's old set.
        stale = [
            p for p in _outputs(item, args.out, True, True) if p not in planned and p.resolve() not in inputs
        ]
        before = {target: _identity(target) for target in targets}
        try:
            save_label_png(targets[0], result.labels, palette)
            if args.overlay:
                save_image(targets[1], overlay(image, result.labels, palette, alpha=args.alpha))
            if args.confidence and result.confidence is not None:
                save_confidence_png(targets[-1], result.confidence)
            removed += _remove(stale)
        except BaseException:
            # All outputs of an image or none of them. Once one file of the set was replaced, the
            # earlier run's set is broken too, so none of it stays; if nothing was replaced yet (the
            # failure came during the first write), the earlier set is left as it was.
            if any(_identity(target) != before[target] for target in targets):
                _remove([*targets, *stale], quiet=True)
            raise
        replaced += sum(before[target] is not None for target in targets)
        done += 1
    if done:
        extras = []
        if replaced:
            extras.append(f"replaced {replaced} existing file(s)")
        if removed:
            extras.append(f"removed {removed} stale overlay/confidence file(s) of an earlier run")
        print(
            f"wrote {done} prediction(s) to {args.out}"
            + (f" ({'; '.join(extras)})" if extras else "")
            + (f"; {failed} input(s) failed" if failed else "")
        )
    else:  # nothing was written, and --out may not even exist: say so rather than "wrote 0"
        print(f"no prediction written: all {failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
