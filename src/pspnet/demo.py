"""``pspnet demo``: does global context matter? Train FCN and PSPNet on the built-in benchmark.

The whole path a user would take with real data runs here on generated data: the folder dataset
loader, the paper's training recipe (SGD, poly, 10x head lr, aux 0.4), evaluation with the
authors' metrics, saved models, and a report. Both models share backbone, data, schedule and seed;
the only difference is the pyramid pooling module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pspnet.data.datasets import SegmentationDataset, open_dataset
from pspnet.data.info import CONTEXT_DEMO
from pspnet.data.synthetic import ensure_demo_data
from pspnet.data.transforms import train_transforms
from pspnet.demo_report import ModelRun, write_report
from pspnet.errors import InputError
from pspnet.models.pspnet import PSPNet
from pspnet.models.registry import attach_metadata, create_model

__all__ = ["DemoSettings", "open_demo_datasets", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """The demo's budget. Defaults: about 4-5 minutes on 2 CPU cores, gap visible on every seed."""

    out_dir: Path = Path("pspnet_demo")
    cache_dir: Path | None = None  # default: out_dir / "data"
    seed: int = 0
    size: int = 192
    num_train: int = 2000
    num_val: int = 200
    iterations: int = 280
    batch_size: int = 8
    base_lr: float = 0.02
    threads: int | None = None
    examples: int = 4
    progress: bool = True


def open_demo_datasets(
    root: str | os.PathLike[str], size: int, seed: int
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) of a generated benchmark, through the real folder loader.

    Whole-image training, flips only: the label of a boat/car depends on which ground covers more
    of the WHOLE image, so scale-and-crop augmentation would change the right answer.
    """
    augment = train_transforms(size, scale=None, rotate=None, blur=False, flip=True)
    train = open_dataset(root, "folder", "train", info=CONTEXT_DEMO, transform=augment, seed=seed)
    val = open_dataset(root, "folder", "val", info=CONTEXT_DEMO, seed=seed)
    return train, val


def _datasets(settings: DemoSettings) -> tuple[SegmentationDataset, SegmentationDataset]:
    cache = settings.cache_dir or settings.out_dir / "data"
    root = ensure_demo_data(
        cache,
        settings.seed,
        num_train=settings.num_train,
        num_val=settings.num_val,
        size=settings.size,
        progress=settings.progress,
    )
    return open_demo_datasets(root, settings.size, settings.seed)


def _train(preset: str, train_set, settings: DemoSettings, out: Path) -> tuple[PSPNet, list[dict], float]:
    from pspnet.engine.recipe import train_model

    torch.manual_seed(settings.seed)
    model = create_model(preset, num_classes=CONTEXT_DEMO.num_classes)
    attach_metadata(model, preset, CONTEXT_DEMO, model.preprocess)
    start = time.perf_counter()
    history = train_model(
        model,
        train_set,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        base_lr=settings.base_lr,
        seed=settings.seed,
        progress=settings.progress,
        description=f"train {preset}",
    )
    return model.eval(), history, time.perf_counter() - start


def _pick_examples(models: list[PSPNet], val_set, count: int) -> list[list[np.ndarray]]:
    """Validation images where the two models disagree most on context classes, for the grid."""
    from pspnet.engine.inference import predict_probs
    from pspnet.viz import colorize

    if count <= 0:
        return []
    ctx = np.array([CONTEXT_DEMO.class_names.index(n) for n in CONTEXT_DEMO.context_classes])
    scored = []
    for index in range(min(len(val_set), 40)):
        image, mask = val_set.load_raw(index)
        preds = [predict_probs(m, image).argmax(0).numpy() for m in models]
        on_ctx = np.isin(mask, ctx)
        gain = float(((preds[1] == mask) & on_ctx).sum()) - float(((preds[0] == mask) & on_ctx).sum())
        scored.append((gain, index, image, mask, preds))
    scored.sort(key=lambda item: -item[0])
    rows = []
    for _, _, image, mask, preds in scored[:count]:
        shown = np.where(mask == CONTEXT_DEMO.ignore_index, 0, mask)
        rows.append([image] + [colorize(x, CONTEXT_DEMO.palette) for x in (shown, *preds)])
    return rows


def run_demo(settings: DemoSettings = DemoSettings()) -> Path:
    """Run the whole demo and return the path of ``report.md``."""
    from pspnet.engine.evaluate import evaluate
    from pspnet.io.checkpoint import save_model

    if settings.threads is not None and settings.threads < 1:
        raise InputError(f"threads must be >= 1 (or None: all cores), got {settings.threads}")
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    train_set, val_set = _datasets(settings)
    runs: list[ModelRun] = []
    models: list[PSPNet] = []
    for preset, label in (("fcn_tiny", "FCN (no PPM)"), ("pspnet_tiny", "PSPNet")):
        model, history, seconds = _train(preset, train_set, settings, out)
        path = save_model(model, out / f"{preset}.safetensors")
        result = evaluate(model, val_set, mode="whole", progress=settings.progress)
        metrics = result.metrics
        runs.append(
            ModelRun(
                label=label,
                preset=preset,
                iou=[float(v) for v in metrics.iou],
                miou=float(metrics.miou),
                allacc=float(metrics.allacc),
                confusion=np.asarray(result.confusion).astype(int).tolist(),
                history=history,
                train_seconds=seconds,
                model_path=str(path),
            )
        )
        models.append(model)
    grid = _pick_examples(models, val_set, settings.examples)
    settings_dict = {k: str(v) if isinstance(v, Path) else v for k, v in settings.__dict__.items()}
    settings_dict["total_seconds"] = round(time.perf_counter() - total_start, 1)
    return write_report(out, CONTEXT_DEMO, runs[0], runs[1], grid_rows=grid, settings=settings_dict)
