"""Per-sample cost of a training sample, fused vs step-by-step augmentation, in the same run.

Generates Cityscapes-size PNG pairs (smooth images, blocky labels), then alternates the two
pipelines over the same samples and seeds on one OpenCV thread (a loader worker's share of a
core), printing seconds per sample, the split between reading the files and augmenting, and the
ratio. Usage: ``python benchmarks/loader.py [--size 1024x2048] [--crop 713] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from pspnet.bench.workloads import write_png_pairs
from pspnet.data.datasets import open_dataset
from pspnet.data.transforms import train_transforms


def _seconds_per_sample(dataset, count: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x2048", help="HxW of the generated images")
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="pspnet-loader-") as tmp:
        root = Path(tmp)
        write_png_pairs(root, args.samples, size, 19)  # type: ignore[arg-type]
        plain = open_dataset(root, "folder", "train", num_classes=19)
        sets = {
            name: open_dataset(
                root, "folder", "train", transform=train_transforms(args.crop, fused=fused), num_classes=19
            )
            for name, fused in (("fused", True), ("stepwise", False))
        }
        times: dict[str, list[float]] = {"read": [], "fused": [], "stepwise": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            for i in range(args.samples):
                plain._load(i)  # what __getitem__ reads before augmenting (uint8 masks)
            times["read"].append((time.perf_counter() - start) / args.samples)
            for name, dataset in sets.items():
                times[name].append(_seconds_per_sample(dataset, args.samples))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{size[0]}x{size[1]} -> crop {args.crop}, {args.samples} samples x {args.rounds} rounds, 1 thread")
    print(f"read + decode + label checks: {med['read'] * 1e3:.1f} ms per sample")
    for name in ("stepwise", "fused"):
        spread = f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}"
        augment = med[name] - med["read"]
        print(
            f"{name:9s} {med[name] * 1e3:6.1f} ms per sample ({spread}); "
            f"augmentation about {augment * 1e3:.1f} ms"
        )
    print(
        f"fused vs stepwise: {med['stepwise'] / med['fused']:.2f}x per sample, "
        f"{(med['stepwise'] - med['read']) / max(med['fused'] - med['read'], 1e-9):.1f}x augmentation"
    )


if __name__ == "__main__":
    main()
