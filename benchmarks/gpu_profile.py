"""Where the time of a PSPNet training step goes on a GPU: the profiler's top operators.

Profiles a few steps of the engine's recipe (two-group SGD, main + 0.4 x aux cross-entropy) after
warm-up, with bf16 autocast and channels-last, optionally compiled, and prints the operators that
take the most GPU time plus the share of convolutions, BatchNorm, elementwise and the loss.

    python benchmarks/gpu_profile.py --preset pspnet50 --size 713 --batch 8 [--compile]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from pspnet import create_model
from pspnet.engine.optim import build_optimizer, segmentation_loss

GROUPS = {
    "conv": ("conv", "cudnn", "gemm", "sm90", "xmma", "cutlass", "implicit"),
    "batchnorm": ("batch_norm", "bn_", "welford"),
    "loss/softmax": ("nll", "softmax", "cross_entropy"),
    "upsample": ("upsample", "interp"),
    "optimizer": ("foreach", "sgd", "multi_tensor"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="pspnet50")
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--size", type=int, default=713)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    model = create_model(args.preset, num_classes=args.num_classes).cuda().train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, 0.01)
    if args.compile:
        model.compile()
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = model(x)
        loss, _, _ = segmentation_loss(outputs, y, aux_weight=0.4)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    steps = 3
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    shares: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in events:
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        if not t or e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total += t
        name = e.key.lower()
        group = next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other")
        shares[group] += t
    print(f"GPU time per step {total / steps / 1e3:.1f} ms; kernel groups (share of GPU time):")
    for group, t in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {group:<14}{100 * t / max(total, 1e-9):5.1f}%")


if __name__ == "__main__":
    main()
