"""Memory+ (Berges et al., "Memory Layers at Scale", arXiv 2412.09764): a product-key memory whose output is gated,
``y = W2 (mem(x) * silu(W1 x))``, with normalised queries and keys.

``mem(x)`` is PKM's read (:mod:`peerlab.mixers.pkm`): per-head queries, exact product-key top-k, a softmax over
each head's k scores and a weighted bag of value rows, summed over heads. What the paper states and we follow: the
SiLU gate ``W1`` and output projection ``W2`` (both d_model x d_model), query/key normalisation for stability, and
values in their own optimizer group at a fixed lr 1e-3 (here the ``pkm_values`` group, which already has those
settings). The memory read is :class:`~peerlab.mixers.pkm.PKM`'s, inherited. What it leaves open and we chose:

- the normalisation: each query half and each sub-key is RMS-normalised without a learned scale and scores are
  divided by sqrt(d_key / 2) (``ProductKeyRouter(qk_norm=True)``), so random scores have unit variance, about
  PKM's at init; no query BatchNorm (``query_norm: none``), which keeps training causal;
- sizes: PKM's matched rule with half the d_key (``mixers/matched_sizes.py``), so the gate's 0.25x of the FFW's
  FLOPs fits under the rule's 0.5x; the paper's own memories (1024^2 keys, 4 heads, k 32) are one explicit override;
- init: values N(0, 1/d_model) as PKM's, ``W1`` as an FFW's first layer and ``W2`` as its residual output;
- one memory per sparse block (the paper shares one memory pool across its memory layers; peerlab places one
  layer per sparse block, so there is nothing to share).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peerlab.mixers.base import ActivationMemory, Precision
from peerlab.mixers.pkm import PKM


class MemoryPlus(PKM):
    SIZE_RULE = "memory_plus"

    def __init__(
        self,
        d_model: int,
        n_memories: int | None = None,
        heads: int | None = None,
        k: int | None = None,
        d_key: int | None = None,
        query_norm: str = "none",
        qk_norm: bool = True,
        shared_keys: bool = False,
        score: str = "softmax",
        stable_ties: bool = False,
        n_layer: int = 1,
    ) -> None:
        super().__init__(d_model, n_memories, heads, k, d_key, query_norm, shared_keys, score, stable_ties, n_layer,
                         qk_norm=qk_norm)
        self.gate = nn.Linear(d_model, d_model, bias=False)  # W1
        self.out = nn.Linear(d_model, d_model, bias=False)  # W2
        nn.init.normal_(self.gate.weight, std=0.02)
        nn.init.normal_(self.out.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(super().forward(x) * F.silu(self.gate(x)))

    def flops_per_token(self) -> int:
        return super().flops_per_token() + 2 * 2 * self.d_model**2  # the memory read, then the gate and W2

    def active_params(self) -> int:
        return super().active_params() + 2 * self.d_model**2

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        """PKM's read, plus the gate's (:meth:`_with_gate`)."""
        return self._with_gate(super().activation_memory(tokens, precision, device_type), tokens, precision)

    def split_activation_memory(self, tokens: int, precision: Precision, m: int,
                                device_type: str = "cuda") -> ActivationMemory:
        return self._with_gate(super().split_activation_memory(tokens, precision, m, device_type), tokens, precision)

    def _with_gate(self, read: ActivationMemory, tokens: int, precision: Precision) -> ActivationMemory:
        """The read's, plus the gate's: autocast's copy of the input, the gate and its SiLU, the read (float32) and the
        gated product (or autocast's copy of it) that W2 keeps."""
        c, f, d = precision.matmul_bytes, precision.float_bytes, self.d_model
        gate = tokens * d * ((c if precision.autocast else 0) + 2 * c + f + c)
        return ActivationMemory(saved=read.saved + gate, forward_peak=read.forward_peak,
                                backward_peak=max(read.backward_peak, tokens * d * (2 * f + 2 * c)),
                                autocast_params=2 * d * d if precision.autocast else 0)
