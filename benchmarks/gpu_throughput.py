"""GPU throughput of PSPNet-50 (19 classes): inference at 512x1024 and training at 713x713.

Every figure is a ratio to the eager fp32 model measured in the same run, plus the fraction of
the bf16 matmul peak measured in the same run. Usage (on a CUDA machine):

    python benchmarks/gpu_throughput.py [--compile] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import pspnet

try:
    from pspnet.fastpath import fold_batchnorm
except ImportError:  # fastpath not available: measure without BN folding

    def fold_batchnorm(model):
        return model


def _timeit(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = _timeit(lambda: a @ b, 3, 20)
    return 2 * n**3 / seconds / 1e12


def flops_per_image(model: torch.nn.Module, size: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, *size, device="cuda"))
    return counter.get_total_flops()


def inference(args: argparse.Namespace, peak_bf16: float) -> list[dict]:
    size = (512, 1024)
    base = pspnet.create_model("pspnet50", num_classes=19).cuda().eval()
    flops = flops_per_image(base, size)
    rows = []

    def run(name: str, model, batch: int, dtype: torch.dtype, channels_last: bool, autocast: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn(batch, 3, *size, device="cuda", dtype=dtype).to(memory_format=fmt)

        def step():
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                return model(x)["out"]

        seconds = _timeit(step, 3, args.iters)
        ips = batch / seconds
        rows.append(
            {
                "variant": name,
                "batch": batch,
                "images_per_s": round(ips, 1),
                "tflops": round(ips * flops / 1e12, 1),
                "peak_fraction": round(ips * flops / 1e12 / peak_bf16, 3),
            }
        )
        print(rows[-1], flush=True)

    run("eager fp32 (tf32 off)", base, 8, torch.float32, False, False)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    run("eager tf32", base, 8, torch.float32, False, False)
    cl = base.to(memory_format=torch.channels_last)
    run("bf16 autocast + channels_last", cl, 16, torch.float32, True, True)
    folded = fold_batchnorm(base).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    run("bf16 weights + CL + folded BN", folded, 16, torch.bfloat16, True, False)
    run("bf16 weights + CL + folded BN b32", folded, 32, torch.bfloat16, True, False)
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(folded, mode=args.compile_mode)
        run("... + torch.compile b16", compiled, 16, torch.bfloat16, True, False)
        rows[-1]["compile_s"] = round(time.perf_counter() - start, 1)
        run("... + torch.compile b32", compiled, 32, torch.bfloat16, True, False)
    base_ips = rows[0]["images_per_s"]
    for r in rows:
        r["ratio_vs_fp32"] = round(r["images_per_s"] / base_ips, 2)
    return rows


def _train_rate(name: str, autocast: bool, channels_last: bool, compile_model: bool, iters: int) -> dict:
    size, batch = (713, 713), 8
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = pspnet.create_model("pspnet50", num_classes=19).cuda().train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, *size, device="cuda").to(memory_format=fmt)
    y = torch.randint(0, 19, (batch, *size), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = forward(x)
            loss = F.cross_entropy(out["out"], y, ignore_index=255)
            loss = loss + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    seconds = _timeit(step, 3, iters)
    row = {
        "variant": f"train {name}",
        "batch": batch,
        "images_per_s": round(batch / seconds, 1),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
    }
    print(row, flush=True)
    return row


def training(args: argparse.Namespace) -> list[dict]:
    iters = max(5, args.iters // 2)
    rows = [
        _train_rate("fp32", False, False, False, iters),
        _train_rate("bf16 autocast + CL", True, True, False, iters),
    ]
    if args.compile:
        rows.append(_train_rate("bf16 autocast + CL + compile", True, True, True, iters))
    for r in rows:
        r["ratio_vs_fp32"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (max-autotune is slow)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    peak = matmul_peak(torch.bfloat16)
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s; {torch.cuda.get_device_name()}", flush=True)
    result = {
        "bf16_peak_tflops": round(peak, 1),
        "inference_512x1024": inference(args, peak),
        "training_713": [] if args.skip_train else training(args),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
