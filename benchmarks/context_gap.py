"""Measure the PSPNet-vs-FCN gap on the built-in context benchmark (the numbers behind ``pspnet demo``).

Trains the dilated-FCN baseline (``fcn_tiny``: the same network without the pyramid pooling module)
and ``pspnet_tiny`` with an identical recipe on :mod:`pspnet.data.synthetic` scenes, then reports
whole-image val mIoU, the IoU of the context-dependent classes and how often each model swaps the
members of a context pair (boat <-> car, pier <-> sidewalk).

The training loop is deliberately self-contained (authors' recipe, nothing else): SGD momentum 0.9,
weight decay 1e-4, poly(0.9) learning rate per iteration, 10x learning rate on ``model.head_modules()``,
cross-entropy with ignore index 255 plus 0.4 x the auxiliary loss. Augmentation is a random horizontal
flip only: the label rule is image-global, so crops or strong rescaling would change the answer.

Usage::

    python benchmarks/context_gap.py --seeds 0 1 2 --iters 300 --threads 2
    python benchmarks/context_gap.py --seeds 0 --time-budget 105   # stop each model after 105 s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pspnet import create_model
from pspnet.data.synthetic import CONTEXT_DEMO, ensure_demo_data

PAIRS = (("boat", "car"), ("pier", "sidewalk"))


@dataclass
class RunResult:
    model: str
    seed: int
    iterations: int
    train_seconds: float
    miou: float
    iou: dict[str, float]
    pair_confusion: dict[str, float]  # share of a pair's pixels predicted as the other member


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W, 3) RGB uint8 and masks (N, H, W) uint8 of one split, in name order."""
    names = sorted(p.name for p in (root / "images" / split).glob("*.png"))
    images = np.stack(
        [cv2.imread(str(root / "images" / split / n), cv2.IMREAD_COLOR)[:, :, ::-1] for n in names]
    )
    masks = np.stack([cv2.imread(str(root / "masks" / split / n), cv2.IMREAD_UNCHANGED) for n in names])
    return images, masks


def to_input(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return model.preprocess.normalize(x)


def train(
    model: torch.nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    iters: int,
    batch: int,
    lr: float,
    seed: int,
    time_budget: float | None,
) -> tuple[int, float]:
    """Authors' recipe; returns (iterations done, seconds). Poly schedule over ``iters``."""
    head = {id(p) for m in model.head_modules() for p in m.parameters()}
    base_params = [p for p in model.parameters() if id(p) not in head]
    head_params = [p for p in model.parameters() if id(p) in head]
    optimizer = torch.optim.SGD(
        [{"params": base_params, "scale": 1.0}, {"params": head_params, "scale": 10.0}],
        lr=lr,
        momentum=0.9,
        weight_decay=1e-4,
    )
    rng = np.random.default_rng([seed, 12345])
    order = rng.permutation(len(images))
    cursor = 0
    model.train()
    start = time.perf_counter()
    done = 0
    for it in range(iters):
        if time_budget is not None and time.perf_counter() - start >= time_budget:
            break
        factor = (1.0 - it / iters) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr * factor * group["scale"]
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(images)), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        flip = rng.random(batch) < 0.5
        x_np = np.where(flip[:, None, None, None], images[idx, :, ::-1], images[idx])
        y_np = np.where(flip[:, None, None], masks[idx, :, ::-1], masks[idx])
        x = to_input(model, x_np)
        y = torch.from_numpy(y_np.astype(np.int64)).to(x.device)
        out = model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=255)
        if "aux" in out:
            loss = loss + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = it + 1
        if done % 50 == 0:
            print(
                f"    it {done:4d}/{iters} loss {loss.item():.3f} {time.perf_counter() - start:6.1f}s",
                flush=True,
            )
    return done, time.perf_counter() - start


@torch.no_grad()
def confusion_matrix(
    model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, num_classes: int
) -> np.ndarray:
    """Whole-image inference; confusion[target, prediction] counted with np.bincount."""
    model.eval()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in range(0, len(images), 16):
        pred = model(to_input(model, images[start : start + 16]))["out"].argmax(1).cpu().numpy()
        target = masks[start : start + 16].astype(np.int64)
        valid = target != 255
        conf += np.bincount(
            target[valid] * num_classes + pred[valid], minlength=num_classes * num_classes
        ).reshape(num_classes, num_classes)
    return conf


def summarise(conf: np.ndarray, names: tuple[str, ...]) -> tuple[float, dict[str, float], dict[str, float]]:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = union > 0
    miou = float(np.nanmean(iou[present])) * 100
    per_class = {n: round(float(v) * 100, 2) for n, v in zip(names, iou, strict=True)}
    pairs = {}
    for a, b in PAIRS:
        ia, ib = names.index(a), names.index(b)
        swapped = conf[ia, ib] + conf[ib, ia]
        total = conf[ia].sum() + conf[ib].sum()
        pairs[f"{a}<->{b}"] = round(float(100.0 * swapped / max(total, 1)), 2)
    return miou, per_class, pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["fcn_tiny", "pspnet_tiny"])
    parser.add_argument("--iters", type=int, default=300, help="poly schedule length (and max iterations)")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="stop a model after this many seconds"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pspnet-context-demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per run here")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="model config override, e.g. head_channels=96 (JSON values)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    names = CONTEXT_DEMO.class_names
    results: list[RunResult] = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        root = ensure_demo_data(
            args.cache, seed, num_train=args.num_train, num_val=args.num_val, size=args.size, progress=False
        )
        train_x, train_y = load_split(root, "train")
        val_x, val_y = load_split(root, "val")
        print(f"seed {seed}: data ready in {time.perf_counter() - t0:.1f}s ({root})", flush=True)
        for name in args.models:
            torch.manual_seed(seed)
            model = create_model(name, num_classes=len(names), **overrides).to(args.device)
            iterations, seconds = train(
                model,
                train_x,
                train_y,
                iters=args.iters,
                batch=args.batch,
                lr=args.lr,
                seed=seed,
                time_budget=args.time_budget,
            )
            conf = confusion_matrix(model, val_x, val_y, len(names))
            miou, iou, pairs = summarise(conf, names)
            result = RunResult(name, seed, iterations, round(seconds, 1), round(miou, 2), iou, pairs)
            results.append(result)
            ctx = " ".join(f"{c}={iou[c]:.1f}" for c in CONTEXT_DEMO.context_classes)
            print(
                f"  {name:<12} seed {seed} it {iterations} ({seconds:.0f}s) mIoU {miou:.2f} | {ctx} | "
                f"pole={iou['pole']:.1f} | swaps {pairs}",
                flush=True,
            )
            if args.json is not None:
                with args.json.open("a") as handle:
                    handle.write(
                        json.dumps(
                            {**asdict(result), "overrides": overrides, "args": vars(args)}, default=str
                        )
                    )
                    handle.write("\n")
    print("\nsummary (val mIoU, %):")
    for seed in args.seeds:
        row = {r.model: r for r in results if r.seed == seed}
        cells = "  ".join(f"{m} {row[m].miou:.2f}" for m in args.models if m in row)
        print(f"  seed {seed}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
