"""Shared pieces of the robustness tests: a tiny dataset, a folder dataset on disk, fault injection.

Imported by the test files of this folder (pytest puts the folder on ``sys.path``); nothing here
is collected as a test.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from pspnet.data.info import DatasetInfo, default_palette
from pspnet.data.preprocess import PYTORCH_PREPROCESS

__all__ = [
    "NUM_CLASSES",
    "TinyScenes",
    "assert_same_weights",
    "disk_fills_up",
    "hidden_leftovers",
    "train_overrides",
    "write_folder_dataset",
]

NUM_CLASSES = 3


@dataclass(frozen=True)
class _Sample:
    name: str


class TinyScenes(torch.utils.data.Dataset):
    """The SegmentationDataset contract on 32 px block scenes, deterministic per ``(seed, epoch, index)``.

    Every pixel is labelled; ``die_after`` makes the ``n``-th load call ``die_after[1]()`` (a
    simulated crash or kill, used by the DDP test).
    """

    def __init__(
        self, n: int = 8, size: int = 32, seed: int = 0, die_after: tuple[int, Callable] | None = None
    ):
        names = tuple(f"c{i}" for i in range(NUM_CLASSES))
        self.info = DatasetInfo("tiny", names, default_palette(NUM_CLASSES), crop_size=size, base_size=size)
        self.samples = [_Sample(f"img{i:03d}") for i in range(n)]
        self.n, self.size, self.seed, self.die_after = n, size, seed, die_after
        self.epoch, self.loads = 0, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        blocks = rng.integers(0, NUM_CLASSES, (2, 2))
        mask = np.kron(blocks, np.ones((self.size // 2, self.size // 2), dtype=np.int64))
        colours = np.array(self.info.palette, dtype=np.float64)[mask]
        image = np.clip(colours + rng.normal(0, 20, (self.size, self.size, 3)), 0, 255).astype(np.uint8)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        self.loads += 1
        if self.die_after is not None and self.loads > self.die_after[0]:
            self.die_after[1]()
        image, mask = self.load_raw(index)
        if np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        x = PYTORCH_PREPROCESS.to_tensor(np.ascontiguousarray(image))
        return {"image": x, "mask": torch.from_numpy(np.ascontiguousarray(mask)), "index": int(index)}


def write_folder_dataset(root: Path, n: int = 4, size: int = 32) -> Path:
    """``root/images/{train,val}/*.png`` + ``root/masks/...`` + ``classes.txt`` from TinyScenes."""
    source = TinyScenes(n, size)
    for split in ("train", "val"):
        for i in range(n):
            image, mask = source.load_raw(i)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(source.info.class_names))
    return root


def train_overrides(out: Path, **extra: object) -> list[str]:
    """``--set`` values for a tiny deterministic CPU run (2 images per step, checkpoint every 2)."""
    settings: dict[str, object] = {
        "model.preset": "pspnet_tiny",
        "model.num_classes": NUM_CLASSES,
        "optim.batch_size": 2,
        "optim.iterations": 6,
        "output.dir": str(out),
        "output.checkpoint_interval": 2,
        "output.log_interval": 1,
        "output.progress": False,
        "data.num_workers": 0,
        "eval.enabled": False,
        "deterministic": True,
        "device": "cpu",
    }
    settings.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def hidden_leftovers(folder: Path) -> list[Path]:
    """Temporary files/folders of the atomic writers (``.name.XXXX.tmp``, ``.tmp-iter_N-pid``)."""
    return sorted(p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-"))


@contextmanager
def disk_fills_up(
    when: Callable[[Path], bool], code: int = errno.ENOSPC, fraction: float = 0.5
) -> Iterator[list[Path]]:
    """Writes of ``Path.write_bytes`` / ``Path.write_text`` to a path where ``when(path)`` holds get
    ``fraction`` of their data onto the disk and then fail with ``OSError(code)``, as a full disk
    (ENOSPC), an exceeded quota (EDQUOT) or a failing device (EIO) does.

    These are the lowest-level writes of the checkpoint code (``save_model``, ``state.pt``,
    ``config.yaml``, ``last``). Yields the list of paths that failed.
    """
    failed: list[Path] = []
    real_bytes, real_text = pathlib.Path.write_bytes, pathlib.Path.write_text

    def fill(path: Path, data: bytes) -> None:
        failed.append(Path(path))
        with open(path, "wb") as handle:
            handle.write(data[: int(len(data) * fraction)])
        raise OSError(code, os.strerror(code), str(path))

    def write_bytes(self: Path, data: bytes | memoryview) -> int:
        if when(self):
            fill(self, bytes(data))
        return real_bytes(self, data)

    def write_text(
        self: Path, data: str, encoding: str | None = None, errors: str | None = None, newline=None
    ):
        if when(self):
            fill(self, data.encode(encoding or "utf-8"))
        return real_text(self, data, encoding=encoding, errors=errors, newline=newline)

    pathlib.Path.write_bytes = write_bytes  # type: ignore[method-assign]
    pathlib.Path.write_text = write_text  # type: ignore[method-assign]
    try:
        yield failed
    finally:
        pathlib.Path.write_bytes = real_bytes  # type: ignore[method-assign]
        pathlib.Path.write_text = real_text  # type: ignore[method-assign]
