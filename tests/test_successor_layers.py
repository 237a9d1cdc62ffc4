"""The successor layers of issue 19 against float64 brute-force references, torch's FLOP counter and their
configs: Memory+ (``memory_plus``), linear-expert PEER (``peer_linear``, also in test_sparse_layers' PEER reference
grid) and the fine-grained token-choice MoE (``moe_fine``)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from brute_force import explicit_sum
from peerlab.builders import mixer_factory
from peerlab.mixers import REGISTRY
from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.memory_plus import MemoryPlus
from peerlab.mixers.moe_fine import MoEFine, fine_sizes
from peerlab.mixers.peer import PEER
from peerlab.sizes import load_layer
from reference_check import assert_matches_reference


def reference_memory_plus(layer: MemoryPlus, x):
    memory, indices = explicit_sum(layer, x, lambda t, i: layer.values[i])
    return (memory * F.silu(x @ layer.gate.weight.T)) @ layer.out.weight.T, indices


@pytest.mark.parametrize("kwargs", [
    {},
    {"shared_keys": True, "heads": 1, "k": 6},
    {"query_norm": "layer", "qk_norm": False},
    {"query_norm": "batch"},
])
def test_memory_plus_matches_brute_force_reference(kwargs):
    args = {"d_model": 10, "n_memories": 49, "heads": 2, "k": 5, "d_key": 8, **kwargs}
    assert_matches_reference(MemoryPlus(**args), reference_memory_plus)


def test_qk_norm_makes_scores_invariant_to_query_and_key_scale():
    torch.manual_seed(0)
    layer = MemoryPlus(d_model=16, n_memories=64, heads=2, k=3, d_key=8).double().eval()
    x = torch.randn(5, 16, dtype=torch.float64)
    weights, indices = layer.router(x)
    with torch.no_grad():
        layer.router.query.weight *= 7.0
        layer.router.keys *= 0.1
    weights2, indices2 = layer.router(x)
    torch.testing.assert_close(weights2, weights)
    assert torch.equal(indices2, indices)


@pytest.mark.parametrize("n_experts,granularity", [(8, 2), (6, 3), (4, 4)])
def test_moe_fine_matches_brute_force_reference(n_experts, granularity):
    from test_moe import reference_token_choice

    layer = MoEFine(d_model=12, n_experts=n_experts, granularity=granularity, aux_loss_weight=0.0, z_loss_weight=0.0)
    assert (layer.top_k, layer.d_hidden) == (granularity, 48 // granularity)
    assert_matches_reference(layer, reference_token_choice, tokens=12, seed=3)


def test_moe_fine_experts_cost_exactly_the_ffw_and_the_rule_bounds_the_router():
    for d_model in (24, 32, 48, 64, 80, 96, 1024):
        experts, granularity = fine_sizes(d_model)
        layer_flops = MoEFine(d_model).flops_per_token() if d_model < 1024 else None
        ffw = 16 * d_model**2
        assert 2 * d_model * experts <= 0.25 * ffw  # router
        assert experts / granularity >= 10  # FFWs' worth of parameters
        if layer_flops is not None:
            assert layer_flops - 2 * d_model * experts == ffw
    assert fine_sizes(1024) == (128, 8) and fine_sizes(48) == (96, 8) and fine_sizes(24) == (48, 4)


@pytest.mark.parametrize("kwargs,message", [
    ({"granularity": 5}, "layer.granularity=5: must divide"),
    ({"granularity": 0}, "layer.granularity=0: must be in [1, n_experts"),
    ({"n_experts": 4, "granularity": 8}, "layer.granularity=8"),
])
def test_moe_fine_bad_sizes_name_the_key(kwargs, message):
    with pytest.raises(MixerConfigError) as info:
        MoEFine(16, **kwargs)
    assert message in str(info.value)


def test_peer_linear_config_is_peer_matched_without_activation():
    layer = load_layer("peer_linear")
    assert layer.activation == "identity" and layer.n_experts is None
    with torch.device("meta"):
        peer = mixer_factory(layer)(d_model=48, n_layer=3)
    assert isinstance(peer, PEER) and peer.activation == "identity"
    x = torch.randn(4, 48)
    assert torch.equal(peer.act(x), x)


def test_new_layers_rebuild_from_saved_settings():
    for cls in (MemoryPlus, MoEFine):
        assert f"{cls.__module__}.{cls.__qualname__}" in REGISTRY


def _counted_and_analytic(sparse, grouped_mm: bool = True):
    from peerlab.flops import flops_breakdown
    from peerlab.model import ModelShape, Transformer
    from test_flops import counted_train_flops

    torch.manual_seed(0)
    shape = ModelShape(vocab_size=100, d_model=32, n_layer=3, n_head=2, seq_len=16)
    model = Transformer(shape, FeedForward, sparse, "middle")
    if not grouped_mm:
        model.mixers[1].grouped_mm = False  # torch's counter has no formula for grouped_mm: count the padded path
    batch = 4
    counted = counted_train_flops(model, batch)
    return model.mixers[1], counted, flops_breakdown(model).train * batch * shape.seq_len, 3 * batch * shape.seq_len


def test_memory_plus_flops_match_flop_counter():
    layer, counted, analytic, passes = _counted_and_analytic(
        functools.partial(MemoryPlus, n_memories=256, heads=2, k=8, d_key=16))
    bag = 2 * layer.heads * layer.k * layer.d_model  # embedding_bag is not a matmul: torch does not count it
    assert abs(analytic - (counted + bag * passes)) / analytic < 0.01, (analytic, counted)
    gate = 2 * 2 * layer.d_model**2
    assert gate * passes > 0.01 * analytic  # the gate is in the count: leaving it out would fail the check


def test_moe_fine_flops_match_flop_counter():
    layer, counted, analytic, passes = _counted_and_analytic(functools.partial(MoEFine, n_experts=16, granularity=4),
                                                             grouped_mm=False)
    padding = 3 * layer.padded_slots * 2 * 2 * layer.d_model * layer.d_hidden  # empty slots of the batched matmul
    assert layer.padded_slots > 0
    assert abs(analytic + padding - counted) / counted < 0.01, (analytic, padding, counted)
    router = 2 * layer.d_model * layer.n_experts
    assert router * passes > 0.01 * analytic


def test_peer_linear_flops_match_flop_counter():
    layer, counted, analytic, passes = _counted_and_analytic(functools.partial(
        PEER, n_experts=256, heads=4, k=4, d_key=16, activation="identity", impl="torch", sparse_grads=False))
    bag = 2 * layer.heads * layer.k * layer.d_model
    assert abs(analytic - (counted + bag * passes)) / analytic < 0.01, (analytic, counted)
