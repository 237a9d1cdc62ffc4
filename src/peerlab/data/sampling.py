"""A training sample order that is a pure function of (seed, position), so a resumed run continues exactly.

Position ``p`` of the global stream is sample ``perm_e[p % n]`` with ``e = p // n`` and ``perm_e`` a permutation
seeded by ``(seed, e)``: every epoch visits every block once, in a fresh order. Data-parallel rank ``r`` of ``w``
reads positions ``r, r + w, r + 2w, ...`` (disjoint slices of the same stream). Starting at local position
``start`` (optimizer steps done x micro-batches per step x batch size) continues a killed run where it stopped,
with no sample repeated or skipped.

``len()`` is the whole run's length (from position 0) even when resuming: Lightning restores how many batches of
the epoch were done and ends the epoch when that count plus the batches yielded reaches ``len()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, start: int, end: int, rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ValueError("ResumableSampler needs at least one sample")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in [0, {world})")
        if not 0 <= start <= end:
            raise ValueError(f"start {start} not in [0, end={end}]")
        self.n, self.seed, self.start, self.end, self.rank, self.world = n, seed, start, end, rank, world

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return self.end

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, None
        for local in range(self.start, self.end):
            p = local * self.world + self.rank
            if p // self.n != epoch:
                epoch = p // self.n
                perm = self._perm(epoch)
            yield int(perm[p % self.n])
