"""Training speed through ``pspnet train`` itself (loader, DDP, SyncBN, AMP, logging), on a GPU.

``pspnet bench --train`` times the bare SGD step; this runs the real engine the way a user does,
``torchrun ... -m pspnet.cli train --config cityscapes_pspnet50``, on a generated Cityscapes-layout
dataset (1024x2048 PNGs, labelIds), so the data pipeline, DistributedDataParallel with NCCL,
SyncBatchNorm and the checkpoint/log code are all in the measured loop. Reported per run: images/s
over the log windows after the first (which holds start-up, cuDNN autotuning and any compile) and
the peak GPU memory, from the run's own metrics.jsonl.

    python benchmarks/gpu_engine.py --json results.json                 # the default matrix
    python benchmarks/gpu_engine.py --runs pspnet50:713:8:bf16:cl:compile

A run spec is ``config:crop:batch:amp:layout[:compile]`` with config pspnet50/pspnet101 (the
Cityscapes configs), amp off/bf16/fp16, layout cl/nchw.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

DEFAULT_RUNS = (
    "pspnet50:713:8:off:nchw",
    "pspnet50:713:8:bf16:cl",
    "pspnet50:713:8:bf16:cl:compile",
    "pspnet101:713:8:bf16:cl",
    "pspnet50:473:16:off:nchw",
    "pspnet50:473:16:bf16:cl",
    "pspnet101:473:16:bf16:cl",
    "pspnet50:473:16:fp16:cl",
)
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # the 19 trainIds


def _write_pair(args: tuple[Path, int]) -> None:
    root, i = args
    rng = np.random.default_rng(i)
    h, w = 1024, 2048
    image = cv2.GaussianBlur(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (3, 3), 0)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = np.full((h, w), LABEL_IDS[0], np.uint8)
    for _ in range(40):  # rectangles of random classes: realistic PNG sizes, every class present
        y, x = int(rng.integers(0, h - 64)), int(rng.integers(0, w - 64))
        dy, dx = int(rng.integers(32, 400)), int(rng.integers(32, 600))
        label[y : y + dy, x : x + dx] = LABEL_IDS[int(rng.integers(len(LABEL_IDS)))]
    city = "synth"
    img_dir, gt_dir = root / "leftImg8bit" / "train" / city, root / "gtFine" / "train" / city
    cv2.imwrite(str(img_dir / f"{city}_{i:06d}_000019_leftImg8bit.png"), image)
    cv2.imwrite(str(gt_dir / f"{city}_{i:06d}_000019_gtFine_labelIds.png"), label)


def make_dataset(root: Path, count: int) -> Path:
    """A Cityscapes-layout training split of ``count`` generated 1024x2048 images (reused if there)."""
    img_dir, gt_dir = root / "leftImg8bit" / "train" / "synth", root / "gtFine" / "train" / "synth"
    if img_dir.is_dir() and len(list(img_dir.glob("*.png"))) >= count:
        return root
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_pair, [(root, i) for i in range(count)]))
    return root


def run_one(spec: str, data: Path, out: Path, iterations: int, workers: int) -> dict[str, Any]:
    preset, crop, batch, amp, layout, *rest = spec.split(":")
    compiled = rest == ["compile"]
    run_dir = out / spec.replace(":", "_")
    log_interval = max(2, iterations // 4)
    settings = {
        "data.root": str(data),
        "data.crop_size": int(crop),
        "data.num_workers": workers,
        "data.verify": False,
        "data.val_split": None,
        "eval.enabled": False,
        "optim.batch_size": int(batch),
        "optim.iterations": iterations,
        "optim.epochs": None,
        "optim.amp": amp,
        "optim.channels_last": layout == "cl",
        "optim.compile": compiled,
        "output.dir": str(run_dir),
        "output.log_interval": log_interval,
        "output.checkpoint_interval": 0,
        "output.progress": False,
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "pspnet.cli", "train", "--config", f"cityscapes_{preset}",
        *[arg for k, v in settings.items() for arg in ("--set", f"{k}={json.dumps(v)}")],
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return {"run": spec, "error": (proc.stderr or proc.stdout)[:1500]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if "images_per_s" in r]
    steady = windows[1:] or windows
    return {
        "run": spec,
        "preset": preset,
        "crop": int(crop),
        "batch": int(batch),
        "amp": amp,
        "channels_last": layout == "cl",
        "compile": compiled,
        "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
        "first_window_images_per_s": windows[0]["images_per_s"],
        "max_memory_gb": max(r.get("max_memory_mb", 0.0) for r in windows) / 1024,
        "loss_first_last": [windows[0]["loss"], windows[-1]["loss"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS))
    parser.add_argument("--data", type=Path, default=Path("/tmp/pspnet-synth-cityscapes"))
    # Long enough epochs (60 iterations at batch 8) that the epoch boundary, where the loader's
    # prefetch queue starts empty, does not dominate; 96 images made every epoch 12 iterations.
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=Path("/tmp/pspnet-engine-runs"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = make_dataset(args.data, args.images)
    results = []
    for spec in args.runs:
        row = run_one(spec, data, args.out, args.iterations, args.workers)
        results.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"workers": args.workers, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
