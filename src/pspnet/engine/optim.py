"""The paper's optimiser: SGD with two learning-rate groups and the per-iteration "poly" schedule.

hszhao/semseg ``tool/train.py``: the pretrained backbone (``layer0..layer4``) trains at ``base_lr``,
the layers trained from scratch (PPM, ``cls``, ``aux``) at ``10 * base_lr``; momentum 0.9 and weight
decay 1e-4 apply to every parameter (BN included); after each iteration the rate becomes
``base_lr * (1 - iter / max_iter) ** 0.9``. Evaluating the schedule at the 0-based iteration index
before its update gives the same sequence (the first update uses ``base_lr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.data.info import IGNORE_INDEX

__all__ = ["build_optimizer", "poly_lr", "segmentation_loss", "set_lr"]


def build_optimizer(
    model: nn.Module,
    base_lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    head_lr_mult: float = 10.0,
) -> torch.optim.SGD:
    """SGD with group 0 = backbone at ``base_lr`` and group 1 = ``model.head_modules()`` at 10x.

    Each group stores its multiplier as ``lr_mult`` (saved in the optimizer state, so a resumed
    run applies the same schedule). Frozen parameters (``requires_grad=False``) are left out.
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
    """The poly rate for the update of 0-based ``iteration`` out of ``max_iterations``."""
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    progress = min(max(iteration, 0), max_iterations) / max_iterations
    return base_lr * (1.0 - progress) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr * lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def segmentation_loss(
    outputs: dict[str, Tensor], target: Tensor, *, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(main + aux_weight * aux, main, aux)``; ``aux`` is None without an aux output or with weight 0.

    Each term is the mean cross-entropy over the labelled pixels (those not ``ignore_index``). A
    batch without any labelled pixel (an all-void crop) gives a loss of 0 with zero gradients, not
    the NaN of a mean over nothing: it carries no signal, but it is no divergence either, and its
    backward keeps DDP's gradient all-reduce in step with the other ranks.

    Computed in float32 whatever the autocast type, so bf16 logits do not lose the loss's precision.
    """
    labelled = (target != ignore_index).sum().clamp(min=1)  # stays on the device: no sync

    def mean_ce(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum") / labelled

    main = mean_ce(outputs["out"])
    if aux_weight > 0 and "aux" in outputs:
        aux = mean_ce(outputs["aux"])
        return main + aux_weight * aux, main, aux
    return main, main, None
