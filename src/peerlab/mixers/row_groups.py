"""Gradients of gathered table rows without a scatter over the whole table: each used row's gradient is a
weighted sum over the occurrences that gathered it, computed as one ``embedding_bag`` over occurrences sorted by
row. Cost and size follow the rows used, not the table's length."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from peerlab.mixers.sparse_grads import GradMode, expected_rows, sparse_this_step


class RowGroups:
    """The occurrences of each used table row: indices sorted once, shared by both table gradients."""

    def __init__(self, indices: torch.Tensor, n_rows: int) -> None:
        flat = indices.flatten()
        sorted_rows, self.order = flat.sort()
        if is_fake(flat):
            # A fake tensor (peerlab.parallel.fake_step: a step at full scale measured without memory) has no values,
            # so how many rows it used is unknown: take the count the memory model assumes, uniform retrieval's.
            used = expected_rows(flat.numel(), n_rows)
            self.rows, counts = flat.new_empty(used), flat.new_empty(used)
        else:
            self.rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
        self.ends = counts.cumsum(0)
        self.offsets = self.ends - counts  # start of each row's occurrences
        self.tokens = self.order // indices.shape[1]  # token of each sorted occurrence

    def row_sums(self, coefs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``(rows used, d)``: for each used row r, ``sum over occurrences (t, j) of r of coefs[t, j] vectors[t]``."""
        return F.embedding_bag(self.tokens, vectors, self.offsets, mode="sum",
                               per_sample_weights=coefs.flatten()[self.order])

    def as_grad(self, values: torch.Tensor, n_rows: int, sparse: GradMode) -> torch.Tensor:
        """The gradient of the whole ``(n_rows, d)`` table: sparse rows, or dense (see ``sparse_grads.py``)."""
        if sparse_this_step(sparse, self.rows.numel(), n_rows):
            return torch.sparse_coo_tensor(self.rows.unsqueeze(0), values, (n_rows, values.shape[1]),
                                           is_coalesced=True, check_invariants=False)
        return values.new_zeros(n_rows, values.shape[1]).index_copy_(0, self.rows, values)
