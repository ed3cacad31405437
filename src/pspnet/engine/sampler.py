"""The training sampler: distributed, reshuffled per epoch from ``(seed, epoch)``, and resumable."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["ResumableSampler", "seed_worker"]


class ResumableSampler(Sampler[int]):
    """A DistributedSampler (order keyed on ``(seed, epoch)``) that can skip its first N indices once.

    Skipping happens at index level, so a resumed run neither loads nor augments the images the
    interrupted run already consumed in the current epoch.
    """

    def __init__(self, dataset: Any, rank: int, world: int, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.inner)
        start, self.skip = self.skip, 0
        return iter(indices[start:])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker with (loader generator draw + worker_id); the generator is reseeded
    # per epoch from (seed, epoch), so user transforms using the global RNGs stay reproducible.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
