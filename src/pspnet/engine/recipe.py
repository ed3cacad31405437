"""A compact training loop with the paper's recipe, for the demo and the ablation study.

The recipe's pieces live in :mod:`pspnet.engine.optim` and are shared with ``pspnet train``.
Recipe (pspnet-facts.md; hszhao/semseg ``tool/train.py``): SGD with momentum 0.9 and weight decay
1e-4 on every parameter, "poly" learning rate ``base * (1 - iter / max_iter) ** 0.9`` updated every
iteration, the layers trained from scratch (PPM and heads) at 10x the backbone's rate,
cross-entropy ignoring 255, and the auxiliary loss added with weight 0.4.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm import tqdm

from pspnet.engine.optim import build_optimizer, poly_lr, segmentation_loss, set_lr
from pspnet.models.pspnet import PSPNet

__all__ = ["train_model"]


def _batches(dataset, batch_size: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Endless shuffled batches; epoch e uses permutation seed (seed, e), so runs are reproducible."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset[i] for i in order[start : start + batch_size]]
            yield {
                "image": torch.stack([it["image"] for it in items]),
                "mask": torch.stack([it["mask"] for it in items]),
            }
        epoch += 1


def train_model(
    model: PSPNet,
    dataset,
    *,
    iterations: int,
    batch_size: int = 8,
    base_lr: float = 0.01,
    aux_weight: float = 0.4,
    seed: int = 0,
    log_interval: int = 10,
    progress: bool = True,
    description: str = "train",
) -> list[dict[str, float]]:
    """Train in place with the paper's recipe on CPU; returns the loss history.

    A compact single-process loop for the demo and the ablation study (no checkpoints, no DDP);
    ``pspnet train`` is the full engine. Non-finite losses stop the run with the iteration named.
    """
    if len(dataset) < batch_size:
        raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}")
    torch.manual_seed(seed)
    model.train()
    optimizer = build_optimizer(model, base_lr)
    history: list[dict[str, float]] = []
    running: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=iterations, desc=description, disable=not progress, dynamic_ncols=True)
    for iteration, batch in zip(range(iterations), _batches(dataset, batch_size, seed), strict=False):
        set_lr(optimizer, poly_lr(base_lr, iteration, iterations))
        loss, _, _ = segmentation_loss(model(batch["image"]), batch["mask"], aux_weight=aux_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {iteration}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.item())
        bar.update(1)
        if (iteration + 1) % log_interval == 0 or iteration + 1 == iterations:
            elapsed = time.perf_counter() - start
            entry = {
                "iter": iteration + 1,
                "loss": sum(running) / len(running),
                "lr": poly_lr(base_lr, iteration, iterations),
                "images_per_s": (iteration + 1) * batch_size / elapsed,
            }
            history.append(entry)
            running.clear()
            bar.set_postfix(loss=f"{entry['loss']:.3f}", img_s=f"{entry['images_per_s']:.1f}")
    bar.close()
    return history
