"""``pspnet ablate``: the paper's Table 1 study, re-run on the built-in context benchmark.

Every variant is the same tiny dilated ResNet trained with the same data, schedule and seed; only
the option the paper varies changes. The paper's ADE20K numbers (ResNet-50, single scale) are
printed beside ours so a user can see which conclusions carry over to this benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from pspnet.data.info import CONTEXT_DEMO

__all__ = ["ABLATIONS", "Ablation", "AblationRow", "format_table", "run_ablation"]


@dataclass(frozen=True)
class Ablation:
    """One row of Table 1: a name, the model options it changes, the aux weight, the paper's mIoU."""

    name: str
    overrides: dict[str, Any]
    aux_weight: float
    paper_miou: float | None


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("fcn_aux0", {"use_ppm": False}, 0.0, 35.82),
    Ablation("fcn", {"use_ppm": False}, 0.4, 37.23),
    Ablation("b1_max", {"bins": (1,), "pooling": "max", "reduction": False}, 0.4, 39.94),
    Ablation("b1_avg", {"bins": (1,), "pooling": "avg", "reduction": False}, 0.4, 40.07),
    Ablation("b1236_max", {"pooling": "max", "reduction": False}, 0.4, 40.18),
    Ablation("b1236_avg", {"pooling": "avg", "reduction": False}, 0.4, 41.07),
    Ablation("b1236_max_dr", {"pooling": "max", "reduction": True}, 0.4, 40.87),
    Ablation("b1236_avg_dr", {"pooling": "avg", "reduction": True}, 0.4, 41.68),
    Ablation("refine", {"decoder": "refine"}, 0.4, None),
)
"""Paper (ADE20K val, ResNet-50): aux weight study on the FCN baseline, then Table 1's pooling rows.
``refine`` is not in the paper: the default model plus the learned 1/4-resolution decoder
(:mod:`pspnet.models.decoder`, docs/decoder.md)."""


@dataclass
class AblationRow:
    ablation: Ablation
    miou: float
    context_iou: float
    seconds: float


def run_ablation(
    names: list[str] | None = None,
    *,
    data_root: str,
    iterations: int,
    batch_size: int,
    base_lr: float,
    seed: int,
    size: int,
    progress: bool = True,
) -> list[AblationRow]:
    """Train and evaluate each chosen variant on the benchmark stored at ``data_root``."""
    from pspnet.demo import open_demo_datasets
    from pspnet.engine.evaluate import evaluate
    from pspnet.engine.recipe import train_model
    from pspnet.models.registry import create_model

    known = {a.name: a for a in ABLATIONS}
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; available: {', '.join(known)}")
    chosen = [known[n] for n in names] if names else list(ABLATIONS)
    train_set, val_set = open_demo_datasets(data_root, size, seed)
    ctx = [CONTEXT_DEMO.class_names.index(n) for n in CONTEXT_DEMO.context_classes]
    rows = []
    for ablation in chosen:
        torch.manual_seed(seed)
        model = create_model("pspnet_tiny", num_classes=CONTEXT_DEMO.num_classes, **ablation.overrides)
        start = time.perf_counter()
        train_model(
            model,
            train_set,
            iterations=iterations,
            batch_size=batch_size,
            base_lr=base_lr,
            aux_weight=ablation.aux_weight,
            seed=seed,
            progress=progress,
            description=ablation.name,
        )
        metrics = evaluate(model.eval(), val_set, mode="whole", progress=False).metrics
        context = sum(float(metrics.iou[i]) for i in ctx) / len(ctx)
        rows.append(AblationRow(ablation, float(metrics.miou), context, time.perf_counter() - start))
    return rows


def format_table(rows: list[AblationRow]) -> str:
    lines = [
        f"{'variant':<14}{'ours mIoU':>10}{'context IoU':>13}{'paper mIoU':>12}   options",
        "-" * 78,
    ]
    for row in rows:
        a = row.ablation
        paper = f"{a.paper_miou:.2f}" if a.paper_miou is not None else "-"
        opts = ", ".join(f"{k}={v}" for k, v in a.overrides.items()) + f", aux={a.aux_weight}"
        lines.append(f"{a.name:<14}{row.miou * 100:>10.1f}{row.context_iou * 100:>13.1f}{paper:>12}   {opts}")
    lines.append("paper: ADE20K val, ResNet-50, single scale (Zhao et al. 2017, Table 1 and the aux study)")
    return "\n".join(lines)
