"""Speed of our PSPNet against the authors' own model (hszhao/semseg), same weights, same run.

The authors' code is not part of this package: point ``--semseg`` at a checkout of
https://github.com/hszhao/semseg (the folder holding ``model/pspnet.py``). Both models get the same
weights (ours converted to theirs with the converter's key map), their outputs are compared, and
eval forwards are timed in interleaved rounds (A, B, A, B, ...) so that a noisy minute slows both
alike; the reported figure is the median over rounds of our time / their time.

    python benchmarks/vs_authors.py --semseg /path/to/semseg --size 473 --threads 2 --rounds 5

Prints the ratio and writes JSON with ``--json``. Results go in docs/performance.md, never in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pspnet import create_model
from pspnet.bench import count_flops, matmul_peak_gflops
from pspnet.io.convert import SEMSEG_PREFIXES


def authors_model(semseg: Path, depth: int, num_classes: int) -> torch.nn.Module:
    sys.path.insert(0, str(semseg))
    from model.pspnet import PSPNet as AuthorsPSPNet  # type: ignore[import-not-found]

    return AuthorsPSPNet(layers=depth, classes=num_classes, pretrained=False).eval()


def to_authors_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = [(ours, theirs) for theirs, ours in SEMSEG_PREFIXES]
    out = {}
    for key, value in state.items():
        ours, theirs = next(pair for pair in inverse if key.startswith(pair[0]))
        out[theirs + key[len(ours) :]] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semseg", type=Path, required=True, help="checkout of hszhao/semseg")
    parser.add_argument("--depth", type=int, default=50, choices=(50, 101))
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--size", type=int, default=473, help="square input side; (size-1) %% 8 == 0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = create_model(f"pspnet{args.depth}", num_classes=args.num_classes).eval()
    theirs = authors_model(args.semseg, args.depth, args.num_classes)
    missing, unexpected = theirs.load_state_dict(to_authors_keys(ours.state_dict()), strict=False)
    if [k for k in missing if not k.startswith("aux.")] or unexpected:
        raise SystemExit(f"weights do not line up: missing {missing[:5]}, unexpected {unexpected[:5]}")
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        diff = float((ours(x)["out"] - theirs(x)).abs().max())
        ours_s, theirs_s, ratios = [], [], []
        for _ in range(args.rounds + 1):  # round 0 warms both up and is dropped
            start = time.perf_counter()
            ours(x)
            mid = time.perf_counter()
            theirs(x)
            end = time.perf_counter()
            ours_s.append(mid - start)
            theirs_s.append(end - mid)
            ratios.append((end - mid) / (mid - start))
    ours_s, theirs_s, ratios = ours_s[1:], theirs_s[1:], ratios[1:]
    flops = count_flops(ours, (args.size, args.size))
    peak = matmul_peak_gflops("cpu")
    result = {
        "depth": args.depth,
        "num_classes": args.num_classes,
        "size": args.size,
        "threads": args.threads,
        "rounds": args.rounds,
        "ours_s_median": statistics.median(ours_s),
        "authors_s_median": statistics.median(theirs_s),
        "speed_ratio_ours_vs_authors": statistics.median(ratios),
        "speed_ratio_range": [min(ratios), max(ratios)],
        "max_abs_logit_diff": diff,
        "gflops_per_image": flops / 1e9,
        "matmul_peak_gflops": peak,
        "ours_fraction_of_peak": flops / 1e9 / statistics.median(ours_s) / peak,
        "torch": torch.__version__,
    }
    ratio = result["speed_ratio_ours_vs_authors"]
    print(
        f"PSPNet-{args.depth} {args.size}x{args.size}, {args.threads} thread(s): "
        f"ours {result['ours_s_median']:.2f} s, authors' {result['authors_s_median']:.2f} s -> "
        f"ours runs at {ratio:.3f}x the authors' speed "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}); max |logit diff| {diff:.1e}; "
        f"ours at {100 * result['ours_fraction_of_peak']:.0f}% of the {peak:.0f} GFLOP/s matmul peak"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
