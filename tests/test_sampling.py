from __future__ import annotations

from collections import Counter

import pytest

from peerlab.data.sampling import ResumableSampler


def test_each_epoch_visits_every_sample_once_in_a_new_order():
    order = list(ResumableSampler(10, seed=3, start=0, end=30))
    epochs = [order[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


def test_resuming_continues_the_same_stream():
    whole = list(ResumableSampler(7, seed=1, start=0, end=40))
    assert list(ResumableSampler(7, seed=1, start=17, end=40)) == whole[17:]
    assert len(ResumableSampler(7, seed=1, start=17, end=40)) == 40  # whole-run length, see the module doc


def test_ranks_read_disjoint_slices_of_one_stream():
    single = list(ResumableSampler(12, seed=0, start=0, end=24))
    r0 = list(ResumableSampler(12, seed=0, start=0, end=12, rank=0, world=2))
    r1 = list(ResumableSampler(12, seed=0, start=0, end=12, rank=1, world=2))
    assert [x for pair in zip(r0, r1, strict=True) for x in pair] == single
    assert Counter(r0[:6] + r1[:6]) == Counter(single[:12]) and not set(r0[:6]) & set(r1[:6])


def test_bad_arguments():
    with pytest.raises(ValueError):
        ResumableSampler(0, 0, 0, 1)
    with pytest.raises(ValueError):
        ResumableSampler(5, 0, 0, 1, rank=2, world=2)
    with pytest.raises(ValueError):
        ResumableSampler(5, 0, 3, 2)
