"""Validation batches shared out among data-parallel ranks, each scored once.

The split is cut into batches exactly as one process cuts it (``batch_size`` consecutive blocks, the last one
possibly shorter), so every batch holds what it holds in a one-process run: expert-choice routing, which depends
on the batch, routes the same. Rank ``r`` of ``w`` takes batches ``r, r + w, ...``. Ranks must run the same number
of forward passes (DDP broadcasts buffers and FSDP gathers weights in every one), so a rank with one batch fewer
gets a padding batch: real blocks whose targets are all ``IGNORE``, which the LightningModule runs but does not
count (``LanguageModel.score_batch``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

IGNORE = -100  # targets torch's cross_entropy skips (its default ignore_index; peerlab.lm_loss scores alike)


def batches(n_items: int, batch_size: int, limit: int | None = None) -> list[list[int]]:
    """The item indices of each batch a one-process loader makes (the first ``limit`` batches)."""
    out = [list(range(s, min(s + batch_size, n_items))) for s in range(0, n_items, batch_size)]
    return out[:limit] if limit is not None else out


class ShardedBatches(Sampler[list[int]]):
    """Rank ``rank``'s ``batch_size`` slice of each global batch of :func:`batches` (``batch_size x world``
    items); an empty slice becomes a padding batch, which names its items as ``-1 - i`` (see :class:`Padded`)."""

    def __init__(self, n_items: int, batch_size: int, rank: int = 0, world: int = 1, limit: int | None = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in [0, {world})")
        self.mine = []
        for global_batch in batches(n_items, batch_size * world, limit):
            part = global_batch[rank * batch_size:(rank + 1) * batch_size]
            self.mine.append(part or [-1 - i for i in global_batch[:batch_size]])

    def __len__(self) -> int:
        return len(self.mine)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.mine)


class Padded(Dataset):
    """``base[i]`` for ``i >= 0``; for ``-1 - i``, ``base[i]`` with every target ``IGNORE``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i >= 0:
            return self.base[i]
        x, y = self.base[-1 - i]
        return x, torch.full_like(y, IGNORE)
