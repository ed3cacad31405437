"""The training log: ``metrics.jsonl``, optional TensorBoard scalars and validation prediction
images, console messages (rank 0 only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pspnet.errors import InputError
from pspnet.io.checkpoint import atomic_write, storage_error

__all__ = ["METRICS_NAME", "TrainLogger", "read_metrics"]

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a ``metrics.jsonl`` (none when it does not exist). A last line cut short by
    a kill is dropped: it was never a complete entry."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


class TrainLogger:
    """metrics.jsonl, TensorBoard and the console, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out / METRICS_NAME
        self.writer = None
        self.history: list[dict[str, Any]] = []
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise InputError(
                    "output.tensorboard: true needs the tensorboard package: pip install tensorboard "
                    "(or set output.tensorboard=false)"
                ) from exc
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def truncate(self, iteration: int) -> list[dict[str, Any]]:
        """Keep only the entries up to ``iteration`` (the checkpoint a run resumes from) and return
        them: the iterations an interrupted run logged after its last checkpoint are trained again
        and logged again, and must not appear twice. Rewritten atomically; every rank gets the
        kept entries (the file is on storage every resuming rank reads)."""
        entries = read_metrics(self.path)
        kept = [e for e in entries if int(e.get("iter", 0)) <= iteration]
        if self.enabled and len(kept) != len(entries):
            text = "".join(json.dumps(e) + "\n" for e in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return kept

    def log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if not self.enabled:
            return
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as exc:
            error = storage_error(self.path, exc)
            if error is None:
                raise
            raise error from exc
        if self.writer is not None:
            step = int(entry["iter"])
            for key, value in entry.items():
                if key not in ("iter", "epoch", "time") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    @property
    def wants_images(self) -> bool:
        return self.enabled and self.writer is not None

    def log_predictions(self, step: int, examples: Sequence[Any], palette: Sequence[Sequence[int]]) -> None:
        """One TensorBoard image per example: the image, its ground truth and the prediction side
        by side (ignored pixels black), so a run's progress can be seen, not only its mIoU."""
        if not self.wants_images:
            return
        from pspnet.viz import colorize

        for slot, example in enumerate(examples):
            panel = np.concatenate(
                [example.image, colorize(example.mask, palette), colorize(example.pred, palette)], axis=1
            )
            self.writer.add_image(f"val/prediction_{slot}", panel, step, dataformats="HWC")

    def message(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
