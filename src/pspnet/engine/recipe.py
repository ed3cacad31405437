"""The paper's training recipe as small functions, and a compact loop used by the demo.

Recipe (pspnet-facts.md; hszhao/semseg ``tool/train.py``): SGD with momentum 0.9 and weight decay
1e-4 on every parameter, "poly" learning rate ``base * (1 - iter / max_iter) ** 0.9`` updated every
iteration, the layers trained from scratch (PPM and heads) at 10x the backbone's rate,
cross-entropy ignoring 255, and the auxiliary loss added with weight 0.4.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pspnet.data.info import IGNORE_INDEX
from pspnet.models.pspnet import PSPNet

__all__ = ["build_optimizer", "poly_lr", "segmentation_loss", "set_lr", "train_model"]


def build_optimizer(
    model: PSPNet,
    base_lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    head_lr_mult: float = 10.0,
) -> torch.optim.SGD:
    """SGD with two groups: the backbone at ``base_lr``, new layers at ``head_lr_mult * base_lr``.

    Each group remembers its multiplier (``lr_mult``) so :func:`set_lr` can apply the schedule.
    """
    head_ids = {id(p) for m in model.head_modules() for p in m.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    head = [p for p in model.parameters() if id(p) in head_ids and p.requires_grad]
    groups = [
        {"params": backbone, "lr": base_lr, "lr_mult": 1.0},
        {"params": head, "lr": base_lr * head_lr_mult, "lr_mult": head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The poly schedule, evaluated before the update of ``iteration`` (0-based)."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def segmentation_loss(
    outputs: dict[str, Tensor], target: Tensor, *, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(total, main, aux)``; ``aux`` is None when the model has no auxiliary output or weight 0."""
    main = F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)
    if aux_weight > 0 and "aux" in outputs:
        aux = F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
        return main + aux_weight * aux, main, aux
    return main, main, None


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
