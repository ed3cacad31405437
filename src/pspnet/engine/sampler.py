"""The training sampler: distributed, reshuffled per epoch from ``(seed, epoch)``, and resumable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[tuple[int, int]]):
    """A DistributedSampler (order keyed on ``(seed, epoch)``) that can skip its first N indices once.

    Skipping happens at index level, so a resumed run neither loads nor augments the images the
    interrupted run already consumed in the current epoch. Yields ``(epoch, index)`` keys for an
    :class:`~pspnet.data.loader.EpochKeyedDataset`, so persistent workers see the epoch.
    """

    def __init__(self, dataset: Any, rank: int, world: int, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.skip = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.inner)
        start, self.skip = self.skip, 0
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in indices[start:]])

    def __len__(self) -> int:
        return len(self.inner) - self.skip
