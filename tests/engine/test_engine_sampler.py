"""The training sampler's stream: each epoch's permutation, cut to the steps it feeds, epoch after
epoch in one iterator; a resumed stream continues exactly where the interrupted one was."""

from __future__ import annotations

from itertools import islice

import pytest
from torch.utils.data import DistributedSampler

from pspnet.engine.sampler import EpochStreamSampler


def _permutation(n: int, epoch: int, rank: int = 0, world: int = 1, seed: int = 7) -> list[int]:
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_stream_is_each_epochs_permutation_cut_to_its_steps(rank: int, world: int) -> None:
    n, per_epoch = 22, 8  # e.g. 11 indices per rank, steps of 4 -> 8 used, 3 left over
    sampler = EpochStreamSampler(range(n), rank, world, seed=7)
    sampler.start(epoch=0, skip=0, per_epoch=per_epoch)
    keys = list(islice(iter(sampler), 3 * per_epoch))
    expected = [(e, i) for e in range(3) for i in _permutation(n, e, rank, world)[:per_epoch]]
    assert keys == expected


def test_a_resumed_stream_continues_where_the_first_stopped() -> None:
    whole = EpochStreamSampler(range(12), 0, 1, seed=7)
    whole.start(0, 0, 12)
    reference = list(islice(iter(whole), 40))
    resumed = EpochStreamSampler(range(12), 0, 1, seed=7)
    resumed.start(epoch=1, skip=4, per_epoch=12)  # killed after 16 samples: epoch 1, 4 in
    assert list(islice(iter(resumed), 24)) == reference[16:40]


def test_bad_stream_positions_are_refused() -> None:
    sampler = EpochStreamSampler(range(10), 0, 1, seed=0)
    for skip, per_epoch in ((0, 0), (0, 11), (5, 5), (-1, 4)):
        with pytest.raises(ValueError, match="bad stream position"):
            sampler.start(0, skip, per_epoch)
