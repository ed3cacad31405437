"""The learned ``refine`` decoder against the paper's 8x bilinear upsampling, on the built-in benchmark.

For each seed, both decoders train with the demo's recipe (``pspnet_tiny``, same data, same
iterations) and are scored on the validation split: mIoU, context-class IoU, and the boundary
F-score (:mod:`pspnet.engine.boundary`) over all classes and over the object classes (everything
but the sky/water/road background), whose edges the decoder is meant to sharpen. The cost is
counted FLOPs and eval latency, for the tiny model at the demo size and for PSPNet-50 at 473, each
timed in interleaved rounds (bilinear, refine, bilinear, ...) so that noise hits both alike.

    python benchmarks/decoder.py --seeds 0 1 2 --threads 2 --json docs/results/decoder.json

Results go in docs/decoder.md, never in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pspnet import create_model
from pspnet.bench import count_flops
from pspnet.data.info import CONTEXT_DEMO
from pspnet.data.synthetic import ensure_demo_data
from pspnet.demo import DemoSettings, open_demo_datasets
from pspnet.engine.evaluate import evaluate
from pspnet.engine.recipe import train_model

DECODERS = ("bilinear", "refine")
BACKGROUND = ("sky", "water", "road")


def score_seed(seed: int, cache: Path, settings: DemoSettings, progress: bool) -> dict[str, dict[str, float]]:
    root = ensure_demo_data(
        cache,
        seed,
        num_train=settings.num_train,
        num_val=settings.num_val,
        size=settings.size,
        progress=progress,
    )
    train_set, val_set = open_demo_datasets(root, settings.size, seed)
    names = list(CONTEXT_DEMO.class_names)
    context = [names.index(n) for n in CONTEXT_DEMO.context_classes]
    objects = [i for i, n in enumerate(names) if n not in BACKGROUND]
    rows = {}
    for decoder in DECODERS:
        torch.manual_seed(seed)
        model = create_model("pspnet_tiny", num_classes=CONTEXT_DEMO.num_classes, decoder=decoder)
        start = time.perf_counter()
        train_model(
            model,
            train_set,
            iterations=settings.iterations,
            batch_size=settings.batch_size,
            base_lr=settings.base_lr,
            seed=seed,
            progress=progress,
            description=f"seed {seed} {decoder}",
        )
        train_s = time.perf_counter() - start
        result = evaluate(model.eval(), val_set, mode="whole", progress=False, boundary=True)
        m, b = result.metrics, result.boundary
        assert b is not None
        rows[decoder] = {
            "miou": 100 * float(m.miou),
            "context_iou": 100 * statistics.fmean(float(m.iou[i]) for i in context),
            "boundary_f": 100 * float(b.mean_f),
            "boundary_f_objects": 100 * b.mean_over(objects),
            "train_s": train_s,
        }
        print(f"seed {seed} {decoder}: {json.dumps({k: round(v, 2) for k, v in rows[decoder].items()})}")
    return rows


def cost(preset: str, size: int, num_classes: int, rounds: int) -> dict[str, Any]:
    """FLOPs and median eval latency per decoder, timed in interleaved rounds."""
    models = {}
    for decoder in DECODERS:
        torch.manual_seed(0)
        models[decoder] = create_model(preset, num_classes=num_classes, decoder=decoder).eval()
    x = torch.randn(1, 3, size, size)
    flops = {d: count_flops(m, (size, size)) for d, m in models.items()}
    times: dict[str, list[float]] = {d: [] for d in DECODERS}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(rounds):
            for decoder, m in models.items():
                start = time.perf_counter()
                m(x)
                times[decoder].append(time.perf_counter() - start)
    ratios = [r / b for b, r in zip(times["bilinear"], times["refine"], strict=True)]
    return {
        "preset": preset,
        "size": size,
        "gflops": {d: flops[d] / 1e9 for d in DECODERS},
        "flops_ratio": flops["refine"] / flops["bilinear"],
        "latency_ms_median": {d: 1e3 * statistics.median(t) for d, t in times.items()},
        "latency_ratio_median": statistics.median(ratios),
        "params": {d: sum(p.numel() for p in m.parameters()) for d, m in models.items()},
    }


def summarise(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    keys = ("miou", "context_iou", "boundary_f", "boundary_f_objects")
    out: dict[str, dict[str, float]] = {}
    for decoder in DECODERS:
        for key in keys:
            values = [rows[decoder][key] for rows in per_seed.values()]
            out.setdefault(decoder, {})[key] = statistics.fmean(values)
            out[decoder][key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for key in keys:
        deltas = [rows["refine"][key] - rows["bilinear"][key] for rows in per_seed.values()]
        out.setdefault("delta", {})[key] = statistics.fmean(deltas)
        out["delta"][key + "_min"] = min(deltas)
        out["delta"][key + "_max"] = max(deltas)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=Path("pspnet_demo/data"), help="demo data cache")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--big-preset", default="pspnet50", help="preset for the cost row at --big-size")
    parser.add_argument("--big-size", type=int, default=473)
    parser.add_argument(
        "--iterations", type=int, default=None, help="training iterations (default: the demo's)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = DemoSettings()
    if args.iterations:
        settings = dataclasses.replace(settings, iterations=args.iterations)
    per_seed = {seed: score_seed(seed, args.cache, settings, not args.no_progress) for seed in args.seeds}
    summary = summarise(per_seed)
    costs = [
        cost("pspnet_tiny", settings.size, CONTEXT_DEMO.num_classes, args.rounds),
        cost(args.big_preset, args.big_size, 150, max(3, args.rounds // 2)),
    ]
    print(f"\n{'decoder':<10}{'mIoU':>8}{'context':>9}{'BndF':>8}{'BndF obj':>10}   (mean +- std over seeds)")
    for decoder in DECODERS:
        s = summary[decoder]
        print(
            f"{decoder:<10}{s['miou']:>5.1f}+-{s['miou_std']:<3.1f}{s['context_iou']:>6.1f}"
            f"{s['boundary_f']:>8.1f}{s['boundary_f_objects']:>10.1f}"
        )
    d = summary["delta"]
    print(
        f"refine - bilinear: mIoU {d['miou']:+.2f} ({d['miou_min']:+.2f}..{d['miou_max']:+.2f}), "
        f"boundary F {d['boundary_f']:+.2f} ({d['boundary_f_min']:+.2f}..{d['boundary_f_max']:+.2f}), "
        f"objects {d['boundary_f_objects']:+.2f}"
    )
    for c in costs:
        print(
            f"{c['preset']} at {c['size']}: FLOPs x{c['flops_ratio']:.3f} "
            f"({c['gflops']['bilinear']:.2f} -> {c['gflops']['refine']:.2f} GFLOPs), "
            f"latency x{c['latency_ratio_median']:.3f}, "
            f"params {c['params']['bilinear']} -> {c['params']['refine']}"
        )
    if args.json:
        report = {
            "seeds": args.seeds,
            "settings": {k: str(v) for k, v in vars(settings).items()},
            "threads": torch.get_num_threads(),
            "per_seed": per_seed,
            "summary": summary,
            "cost": costs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
