"""The one place FLOPs are counted.

Convention (Kaplan/Chinchilla): a multiply-add is 2 FLOPs; only matrix products are counted (embeddings,
norms, activations, softmax and top-k are not); training costs 3 x forward (backward = 2 x forward).
Attention scores and values are counted over the full ``seq_len`` context per token: the causal mask is not
discounted, matching ``torch.utils.flop_counter`` and Chinchilla's appendix F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peerlab.model import Transformer

TRAIN_MULTIPLIER = 3


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token, by part."""

    attention_proj: int
    attention_mix: int
    mixers: int
    lm_head: int

    @property
    def forward(self) -> int:
        return self.attention_proj + self.attention_mix + self.mixers + self.lm_head

    @property
    def train(self) -> int:
        return TRAIN_MULTIPLIER * self.forward


def flops_breakdown(model: Transformer) -> FlopsBreakdown:
    s = model.shape
    return FlopsBreakdown(
        attention_proj=s.n_layer * 2 * (3 * s.d_model * s.d_model + s.d_model * s.d_model),
        attention_mix=s.n_layer * 2 * (2 * s.seq_len * s.d_model),
        mixers=sum(m.flops_per_token() for m in model.mixers),
        lm_head=2 * s.d_model * s.vocab_size,
    )


def forward_flops_per_token(model: Transformer) -> int:
    return flops_breakdown(model).forward


def train_flops_per_token(model: Transformer) -> int:
    return flops_breakdown(model).train


@dataclass(frozen=True)
class BudgetPlan:
    """How a FLOP budget turns into optimizer steps."""

    budget: float
    train_flops_per_token: int
    tokens_per_step: int
    max_steps: int

    @property
    def flops_per_step(self) -> int:
        return self.train_flops_per_token * self.tokens_per_step

    @property
    def tokens(self) -> int:
        return self.max_steps * self.tokens_per_step

    @property
    def flops(self) -> int:
        return self.max_steps * self.flops_per_step


def tokens_per_step(batch_size: int, seq_len: int, accumulate: int, world: int) -> int:
    """Tokens one optimizer step trains on: the micro-batch's sequences, times the micro-batches accumulated, times
    the data-parallel processes (each takes its own micro-batches)."""
    return batch_size * seq_len * accumulate * world


class BudgetTooSmall(ValueError):
    pass


def plan_budget(budget: float, train_flops_per_token: int, tokens_per_step: int, min_steps: int) -> BudgetPlan:
    """``max_steps = floor(budget / (train_flops_per_token * tokens_per_step))``; refuses fewer than ``min_steps``."""
    if not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"budget={budget}: must be a positive, finite number of FLOPs (e.g. 3e13)")
    flops_per_step = train_flops_per_token * tokens_per_step
    max_steps = int(budget // flops_per_step)
    if max_steps < min_steps:
        raise BudgetTooSmall(
            f"budget={budget:.3g} buys {max_steps} steps of {flops_per_step:.3g} FLOPs for this model; "
            f"at least {min_steps} are needed (budget >= {min_steps * flops_per_step:.3g}, "
            f"or a smaller model/batch)"
        )
    return BudgetPlan(budget, train_flops_per_token, tokens_per_step, max_steps)
