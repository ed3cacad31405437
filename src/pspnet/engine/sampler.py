"""The training sampler: one stream of ``(epoch, index)`` keys over the whole run, resumable.

Each epoch's order is a DistributedSampler permutation keyed on ``(seed, epoch)``, cut to the
samples the epoch's optimizer steps consume. The epochs follow each other in one stream, so the
DataLoader's workers prefetch across epoch boundaries instead of starting every epoch with an
empty queue (which cost a stall per epoch, large on small datasets).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochStreamSampler"]


class EpochStreamSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys, epoch after epoch, from :meth:`start`'s position on.

    ``per_epoch`` indices are taken from each epoch's permutation (the rest would only fill a
    partial optimizer step). Resuming skips, at index level, the part of the current epoch the
    interrupted run already consumed, so those images are neither loaded nor augmented. The keys
    feed an :class:`~pspnet.data.loader.EpochKeyedDataset`, so persistent workers see the epoch.
    """

    def __init__(self, dataset: Any, rank: int, world: int, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.per_epoch = len(self.inner)
        self.first_epoch, self.skip = 0, 0

    def start(self, epoch: int, skip: int, per_epoch: int) -> None:
        """Begin the stream at ``epoch``, after its first ``skip`` indices."""
        if not 0 < per_epoch <= len(self.inner) or not 0 <= skip < per_epoch:
            raise ValueError(
                f"bad stream position: skip {skip}, per_epoch {per_epoch}, rank holds {len(self.inner)}"
            )
        self.first_epoch, self.skip, self.per_epoch = int(epoch), int(skip), int(per_epoch)

    def epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        """The keys of one whole epoch, in order."""
        self.inner.set_epoch(epoch)
        return [(epoch, int(i)) for i in list(self.inner)[: self.per_epoch]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in count(self.first_epoch):
            keys = self.epoch_keys(epoch)
            yield from keys[self.skip if epoch == self.first_epoch else 0 :]
