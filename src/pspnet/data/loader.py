"""DataLoader construction with reproducible shuffling and seeding, single-process or DDP.

Shuffling always goes through a :class:`~torch.utils.data.DistributedSampler` (one replica when
not distributed), so the order of epoch ``e`` depends only on ``(seed, e)``: a resumed run sees
the same order as an uninterrupted one. Call :func:`set_loader_epoch` at the start of each epoch.

Workers are persistent: starting a dozen worker processes at every epoch cost a pipeline stall per
epoch. A persistent worker holds its own copy of the dataset, so the epoch, which keys the
augmentation stream, travels with each index instead: the sampler yields ``(epoch, index)`` keys
(:class:`EpochKeyedSampler`) and :class:`EpochKeyedDataset` hands the epoch to its copy (and
reseeds the worker's global generators from ``(seed, rank, worker, epoch)``) before loading.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from pspnet.errors import InputError

__all__ = [
    "EpochKeyedDataset",
    "EpochKeyedSampler",
    "build_loader",
    "measure_loader_throughput",
    "set_loader_epoch",
]


def _seed_worker(base_seed: int, rank: int, worker_id: int, epoch: int) -> None:
    """Seed Python, NumPy and torch in a worker from ``(base_seed, rank, worker_id, epoch)``.

    The built-in augmentations do not use these global generators (they get an explicit
    per-sample generator), but user transforms might; this keeps those reproducible too,
    whatever the worker's age.
    """
    seq = np.random.SeedSequence([base_seed, rank, worker_id, epoch])
    value = int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class EpochKeyedSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for each index of ``inner``, the epoch being the last ``set_epoch``."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class EpochKeyedDataset(Dataset):
    """Loads ``dataset[index]`` for a key ``(epoch, index)``, first moving ``dataset`` to that epoch.

    In a worker process, entering a new epoch also reseeds the global generators (see
    :func:`_seed_worker`); in the main process they are left alone (the model's dropout uses them).
    """

    def __init__(self, dataset: Any, seed: int = 0, rank: int = 0) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self._epoch: int | None = None
        self._seeded: tuple[int, int] | None = None  # (worker id, epoch); never set in the main process

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self._enter(int(epoch))

    def _enter(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
        worker = get_worker_info()
        if worker is not None and self._seeded != (worker.id, epoch):
            self._seeded = (worker.id, epoch)
            _seed_worker(self.seed, self.rank, worker.id, epoch)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped dataset's (``loader.dataset.info`` keeps working)."""
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self._enter(epoch)
        return self.dataset[index]


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` that is reproducible and DDP-aware.

    Args:
        dataset: typically a :class:`~pspnet.data.datasets.SegmentationDataset`.
        batch_size: samples per batch (per process under DDP).
        shuffle: reshuffle every epoch (order keyed on ``(seed, epoch)``).
        num_workers: loader worker processes (0 = load in the main process).
        seed: base seed for shuffling and worker seeding.
        drop_last: drop the last incomplete batch (training: BN needs batches > 1).
        distributed: shard across ranks; None = when ``torch.distributed`` is initialised.
        pin_memory: page-locked batches for faster GPU copies; None = when CUDA is available.

    Raises:
        InputError: bad sizes, or ``distributed=True`` without an initialised process group.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    if distributed and not _distributed_ready():
        raise InputError(
            "distributed=True but torch.distributed is not initialised; call init_process_group first"
        )
    use_dist = _distributed_ready() if distributed is None else distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if use_dist else (0, 1)
    if use_dist or shuffle:
        inner: Sampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
        )
    else:
        inner = SequentialSampler(dataset)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        EpochKeyedDataset(dataset, seed, rank),
        batch_size=batch_size,
        shuffle=False,
        sampler=EpochKeyedSampler(inner),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch ``epoch``: new shuffle order (sampler) and new augmentation stream (dataset)."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        batch = batch.get("image", next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0])


def measure_loader_throughput(loader: DataLoader, max_batches: int = 50, warmup_batches: int = 1) -> float:
    """Images per second delivered by ``loader`` (after ``warmup_batches``, e.g. worker start-up).

    Reads at most ``warmup_batches + max_batches`` batches; used by ``pspnet bench`` to tell
    whether data loading or the model is the bottleneck.
    """
    if max_batches < 1:
        raise InputError(f"max_batches must be >= 1, got {max_batches}")
    images = 0
    start = None
    for i, batch in enumerate(loader):
        if i == warmup_batches:
            start = time.perf_counter()
        if i >= warmup_batches:
            images += _batch_size_of(batch)
        if i + 1 >= warmup_batches + max_batches:
            break
    if start is None or images == 0:
        raise InputError(
            f"loader has too few batches to measure (need more than {warmup_batches} warm-up batch(es))"
        )
    return images / max(time.perf_counter() - start, 1e-9)
