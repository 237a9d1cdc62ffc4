"""Product Key Memory (Lample et al., 2019), the paper's PKM baseline.

Per-head queries (Linear + BatchNorm), per-head sub-keys, exact product-key top-k, softmax over each head's k
scores, and one table of N value vectors read as a weighted bag, summed over heads. Defaults are the paper's
baseline setting (N = 1024^2 memories, h = 8, k = 32, query BatchNorm). Values train in their own optimizer
group, ``pkm_values`` (constant lr 1e-3 and no weight decay in ``configs/optim/adamw.yaml``, as in PKM).
"""

from __future__ import annotations

from dataclasses import astuple

import torch
from torch import nn

from peerlab.mixers.base import ActivationMemory, Mixer, Precision
from peerlab.mixers.column_shards import (
    bytes_per_token,
    local_columns,
    split_activation_memory,
    weighted_bag_sharded,
)
from peerlab.mixers.matched_sizes import fill_sizes
from peerlab.mixers.product_keys import ProductKeyRouter, weighted_bag


class PKM(Mixer):
    full_precision = True  # retrieval and the weighted sum run in the values' precision, autocast off
    SIZE_RULE = "pkm"  # the matched rule's kind for null sizes (mixers/matched_sizes.py)

    def __init__(
        self,
        d_model: int,
        n_memories: int | None = 1024**2,
        heads: int | None = 8,
        k: int | None = 32,
        d_key: int | None = 128,
        query_norm: str = "batch",
        shared_keys: bool = False,
        score: str = "softmax",
        stable_ties: bool = False,
        n_layer: int = 1,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        # null sizes follow d_model by the matched rule (layer=pkm_matched; mixers/matched_sizes.py)
        n_memories, heads, k, d_key = astuple(fill_sizes(d_model, self.SIZE_RULE, n_memories, heads, k, d_key))
        self.router = ProductKeyRouter(d_model, n_memories, heads, k, d_key, query_norm, shared_keys, score,
                                       stable_ties, size_key="layer.n_memories", qk_norm=qk_norm)
        self.d_model, self.n_memories, self.heads, self.k = d_model, n_memories, heads, k
        self.values = nn.Parameter(torch.empty(n_memories, d_model).normal_(std=d_model**-0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        # Mixed precision: retrieval and the weighted sum run in the values' precision (fp32 master weights).
        with torch.autocast(x.device.type, enabled=False):
            weights, indices = self.router(x.reshape(-1, shape[-1]).to(self.values.dtype))  # (tokens, heads, k)
            if self.tables_group is not None:  # this rank holds some columns of the values (memory parallel)
                y = weighted_bag_sharded(indices.flatten(1), weights.flatten(1), local_columns(self.values),
                                         self.tables_group)
            else:
                y = weighted_bag(indices.flatten(1), weights.flatten(1), self.values)
        return y.to(dtype).view(shape)

    def flops_per_token(self) -> int:
        # Retrieval, then the weighted sum of heads*k value rows.
        return self.router.flops_per_token() + 2 * self.heads * self.k * self.d_model

    def active_params(self) -> int:
        return self.router.num_params() + self.heads * self.k * self.d_model

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        """The router's, plus the bag's indices and offsets; backward: the bag's per-sample weight gradients and
        its sorted indices (the values' dense gradient is ``.grad``, which ``peerlab.parallel.memory`` counts)."""
        f, hk = precision.float_bytes, self.heads * self.k
        router = self.router.activation_memory(tokens, f)
        return ActivationMemory(
            saved=router.saved + tokens * (8 * hk + 24),
            forward_peak=max(router.forward_peak, tokens * f * self.d_model),
            backward_peak=max(router.backward_peak, tokens * ((4 * f + 24) * hk + f * self.d_model)),
        )

    def reset_usage(self) -> None:
        self.router.reset_usage()

    def usage_stats(self) -> dict[str, float]:
        return self.router.usage_stats()

    def usage_tensors(self) -> list[torch.Tensor]:
        return self.router.usage_tensors()

    def expert_tables(self) -> dict[str, nn.Parameter]:
        return {"values": self.values}

    def rows_per_token(self) -> int:
        return self.heads * self.k

    def split_activation_memory(self, tokens: int, precision: Precision, m: int,
                                device_type: str = "cuda") -> ActivationMemory:
        """The router's, and the split read's (``column_shards.split_activation_memory``)."""
        return split_activation_memory("pkm", self.router.activation_memory(tokens, precision.float_bytes), tokens, m,
                                       self.d_model, self.heads * self.k, self.n_memories, precision.float_bytes)

    def split_bytes_per_token(self, m: int, float_bytes: int = 4) -> dict[str, float]:
        return bytes_per_token("pkm", self.d_model, self.heads * self.k, m, float_bytes)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"pkm_values": [self.values], "product_keys": [self.router.keys]}
