"""The analytic FLOP count equals torch's own FlopCounterMode on a real forward+backward pass."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from peerlab.flops import BudgetTooSmall, flops_breakdown, plan_budget
from peerlab.mixers.ffw import FeedForward
from peerlab.model import ModelShape, Transformer

# On CPU, SDPA runs an op that FlopCounterMode has no formula for (it would count 0): register torch's own.
_aten = torch.ops.aten
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in torch.utils.flop_counter.flop_registry:

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def counted_train_flops(model: Transformer, batch: int, math_attention: bool = True) -> int:
    """FLOPs torch counts for one forward+backward. ``math_attention`` runs SDPA as plain bmm ops, so every
    counted FLOP is an actual matmul (no per-kernel formula involved)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    idx = torch.randint(0, model.shape.vocab_size, (batch, model.shape.seq_len))
    backends = [SDPBackend.MATH] if math_attention else [SDPBackend.FLASH_ATTENTION]
    with sdpa_kernel(backends), FlopCounterMode(display=False) as counter:
        model.loss(idx, idx).backward()
    return counter.get_total_flops()


def dense_model(d_model=64, n_layer=2, n_head=2, seq_len=32, vocab=300) -> Transformer:
    shape = ModelShape(vocab_size=vocab, d_model=d_model, n_layer=n_layer, n_head=n_head, seq_len=seq_len)
    return Transformer(shape, functools.partial(FeedForward, hidden_mult=4.0))


@pytest.mark.parametrize("d_model,n_layer,n_head,seq_len,vocab", [(64, 2, 2, 32, 300), (96, 3, 3, 48, 1000), (32, 1, 1, 16, 50)])
def test_dense_train_flops_match_flop_counter(d_model, n_layer, n_head, seq_len, vocab):
    torch.manual_seed(0)
    model = dense_model(d_model, n_layer, n_head, seq_len, vocab)
    batch = 3
    analytic = flops_breakdown(model).train * batch * seq_len
    counted = counted_train_flops(model, batch)
    assert counted > 0
    assert abs(analytic - counted) / counted < 0.01, (analytic, counted)


def test_flash_kernel_count_differs_only_by_its_score_recomputation():
    """With the fused CPU kernel (formulas registered above), torch also counts the backward's recomputation of
    the attention scores, an implementation cost outside the 3 x forward convention; the rest matches exactly."""
    torch.manual_seed(0)
    model = dense_model()
    s, batch = model.shape, 2
    counted = counted_train_flops(model, batch, math_attention=False)
    recompute = s.n_layer * batch * 2 * s.seq_len * s.seq_len * s.d_model
    analytic = flops_breakdown(model).train * batch * s.seq_len
    assert abs(analytic - (counted - recompute)) / counted < 0.01, (analytic, counted, recompute)
    # Guard the guard: attention is really counted (without the formulas it would be 0 and the test vacuous).
    assert counted - recompute > 3 * (flops_breakdown(model).forward - flops_breakdown(model).attention_mix) * batch * s.seq_len


def test_plan_budget_floor_and_minimum():
    plan = plan_budget(1e9, train_flops_per_token=1000, tokens_per_step=128, min_steps=5)
    assert plan.max_steps == int(1e9 // 128_000)
    assert plan.flops <= 1e9 < plan.flops + plan.flops_per_step
    with pytest.raises(BudgetTooSmall, match="budget=1e\\+06 buys 7 steps"):
        plan_budget(1e6, train_flops_per_token=1000, tokens_per_step=128, min_steps=20)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="budget"):
            plan_budget(bad, 1000, 128, 1)
