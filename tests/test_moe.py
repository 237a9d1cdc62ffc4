"""MoE routings against slow loop-over-experts-and-tokens references (float64 values and gradients)."""

from __future__ import annotations

import functools

import pytest
import torch

from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.moe import MoE
from reference_check import assert_matches_reference


def expert_ffw(layer, e, v):
    return layer.act(v @ layer.w1[e]) @ layer.w2[e]


def reference_expert_choice(layer: MoE, x):
    probs = (x @ layer.router.weight.T).softmax(-1)
    tokens = x.shape[0]
    capacity = layer.capacity(tokens)
    y = [torch.zeros_like(x[0]) for _ in range(tokens)]
    picks = []
    for e in range(layer.n_experts):
        ranked = sorted(range(tokens), key=lambda t, e=e: -float(probs[t, e].detach()))[:capacity]
        picks.append(ranked)
        for t in ranked:
            y[t] = y[t] + probs[t, e] * expert_ffw(layer, e, x[t])
    return torch.stack(y), picks


def reference_token_choice(layer: MoE, x):
    probs = (x @ layer.router.weight.T).softmax(-1)
    y = []
    for t in range(x.shape[0]):
        chosen = sorted(range(layer.n_experts), key=lambda e, t=t: -float(probs[t, e].detach()))[: layer.top_k]
        norm = sum(probs[t, e] for e in chosen)
        y.append(sum(probs[t, e] / norm * expert_ffw(layer, e, x[t]) for e in chosen))
    return torch.stack(y), None


@pytest.mark.parametrize("n_experts,capacity_factor", [(4, 1.0), (3, 2.0), (6, 0.5), (1, 1.0)])
def test_expert_choice_matches_reference_and_respects_capacity(n_experts, capacity_factor):
    layer = MoE(d_model=8, n_experts=n_experts, expert_hidden_mult=1.5, capacity_factor=capacity_factor)
    picks = assert_matches_reference(layer, reference_expert_choice, tokens=12, seed=3)
    expected = min(12, max(1, round(capacity_factor * 12 / n_experts)))
    assert all(len(p) == expected for p in picks)


@pytest.mark.parametrize("n_experts,top_k", [(4, 1), (5, 2), (3, 3)])
def test_token_choice_matches_reference(n_experts, top_k):
    layer = MoE(d_model=8, n_experts=n_experts, expert_hidden_mult=1.5, routing="token_choice", top_k=top_k,
                aux_loss_weight=0.0)
    assert_matches_reference(layer, reference_token_choice, tokens=12, seed=3)


def test_load_balance_and_z_loss_equal_their_formulas():
    torch.manual_seed(0)
    layer = MoE(d_model=8, n_experts=4, routing="token_choice", top_k=2, aux_loss_weight=0.5, z_loss_weight=0.25)
    x = torch.randn(20, 8)
    layer(x)
    aux = layer.aux_losses()
    logits = x @ layer.router.weight.T
    probs = logits.softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.stack([(chosen == e).sum() for e in range(4)]).float() / (20 * 2)
    expected_lb = 0.5 * 4 * sum(float(f[e]) * float(probs[:, e].mean().detach()) for e in range(4))
    assert float(aux["load_balance"]) == pytest.approx(expected_lb, rel=1e-5)
    assert float(aux["z_loss"]) == pytest.approx(0.25 * float(torch.logsumexp(logits, -1).pow(2).mean()), rel=1e-5)
    aux["load_balance"].backward()  # the loss trains the router
    assert layer.router.weight.grad.abs().sum() > 0
    layer.eval()
    layer(x)
    assert layer.aux_losses() == {}


def test_single_expert_with_capacity_one_is_the_dense_ffw():
    torch.manual_seed(0)
    ffw = FeedForward(16, hidden_mult=4.0)
    moe = MoE(16, n_experts=1, expert_hidden_mult=4.0, capacity_factor=1.0)
    with torch.no_grad():
        moe.w1.copy_(ffw.up.weight.T.unsqueeze(0))
        moe.w2.copy_(ffw.down.weight.T.unsqueeze(0))
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(moe(x), ffw(x))


def test_usage_and_dropped_tokens():
    torch.manual_seed(0)
    layer = MoE(d_model=8, n_experts=4, capacity_factor=0.5).eval()
    layer.reset_usage()
    with torch.no_grad():
        layer(torch.randn(1, 16, 8))
    stats = layer.usage_stats()
    assert stats["expert_usage"] == 1.0  # every expert takes its C tokens
    assert 0.5 <= stats["dropped_tokens"] < 1.0  # 4 experts x C=2 picks cover at most 8 of 16 tokens
    assert stats["unevenness"] >= 0


@pytest.mark.parametrize("kwargs,message", [
    ({"routing": "hash"}, "layer.routing='hash'"),
    ({"capacity_factor": 0}, "layer.capacity_factor=0"),
    ({"routing": "token_choice", "top_k": 5}, "layer.top_k=5: must be in [1, n_experts=4]"),
    ({"n_experts": 0}, "layer.n_experts=0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(MixerConfigError) as info:
        MoE(8, **{"n_experts": 4, **kwargs})
    assert message in str(info.value)


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice"])
def test_flops_match_flop_counter(routing):
    from peerlab.flops import flops_breakdown
    from peerlab.model import ModelShape, Transformer
    from test_flops import counted_train_flops

    torch.manual_seed(0)
    shape = ModelShape(vocab_size=100, d_model=32, n_layer=3, n_head=2, seq_len=16)
    sparse = functools.partial(MoE, n_experts=8, routing=routing, top_k=2, capacity_factor=1.0)
    model = Transformer(shape, FeedForward, sparse, "middle")
    model.mixers[1].grouped_mm = False  # torch's counter has no formula for grouped_mm; the padded path it counts
    batch = 4  # 64 tokens: capacity 8 per expert, exact
    counted = counted_train_flops(model, batch)
    analytic = flops_breakdown(model).train * batch * shape.seq_len
    # Token choice pads expert groups to the largest for one batched matmul: torch counts those empty slots too.
    moe = model.mixers[1]
    padding = 3 * moe.padded_slots * 2 * 2 * shape.d_model * moe.d_hidden
    if routing == "token_choice":
        assert moe.padded_slots > 0  # random routing is never perfectly balanced: the correction is exercised
    assert analytic + padding == counted, (analytic, padding, counted)  # exact: a 0.5% router term must show


@pytest.mark.parametrize("n_experts,top_k", [(8, 2), (16, 4), (40, 1)])
def test_token_choice_grouped_mm_equals_the_padded_batched_matmul(n_experts, top_k):
    """float32 on the CPU runs F.grouped_mm over the ragged expert groups; the padded path (float64 references,
    CUDA) must give the same values and gradients, experts without tokens included (40 experts, 30 tokens)."""
    torch.manual_seed(0)
    layer = MoE(d_model=16, n_experts=n_experts, expert_hidden_mult=0.5, routing="token_choice", top_k=top_k,
                z_loss_weight=1e-3)
    x = torch.randn(30, 16, requires_grad=True)
    probe = torch.randn(30, 16)
    results = []
    for grouped in (True, False):
        layer.grouped_mm = grouped
        assert layer._grouped(x) is grouped
        y = layer(x.unsqueeze(0)).squeeze(0)
        loss = (y * probe).sum() + sum(layer.aux_losses().values())
        results.append((y, torch.autograd.grad(loss, [x, *layer.parameters()]), layer.padded_slots))
    (y0, g0, pad0), (y1, g1, pad1) = results
    assert pad0 == 0 and pad1 > 0
    torch.testing.assert_close(y0, y1, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
