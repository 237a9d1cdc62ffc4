"""PEER's fast expert paths against the plain autograd path: values, every gradient, sparse table gradients.

The Triton kernels run through Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1 before import)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peerlab.mixers import peer as peer_module
from peerlab.mixers.activations import activation_fn
from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.peer import PEER
from peerlab.mixers.peer_experts import experts_chunked, experts_torch
from peerlab.mixers.peer_triton import experts_triton


def _inputs(tokens=11, hk=12, d=20, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g).requires_grad_()
    indices = torch.randint(0, n, (tokens, hk), generator=g)  # n small: rows repeat across and within tokens
    weights = torch.rand(tokens, hk, generator=g).requires_grad_()
    down = (torch.randn(n, d, generator=g) * 0.5).requires_grad_()
    up = torch.randn(n, d, generator=g).requires_grad_()
    probe = torch.randn(tokens, d, generator=g)
    return x, indices, weights, down, up, probe


def _run(fn, x, indices, weights, down, up, probe):
    y = fn(x, indices, weights, down, up)
    grads = torch.autograd.grad((y * probe).sum(), [x, weights, down, up])
    return y, grads


def _assert_close_f32(got, want, what):
    # float32 with different summation orders: tolerances scale with each tensor's magnitude.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-6 * max(want.abs().max().item(), 1e-6),
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "identity"])
@pytest.mark.parametrize("sparse_grads", [False, True], ids=["dense", "sparse"])
def test_triton_kernels_equal_torch_path(activation, sparse_grads):
    x, indices, weights, down, up, probe = _inputs()
    act = activation_fn(activation)
    y0, g0 = _run(lambda *a: experts_torch(*a, act), x, indices, weights, down, up, probe)
    y1, g1 = _run(lambda *a: experts_triton(*a, activation, sparse_grads), x, indices, weights, down, up, probe)
    _assert_close_f32(y1, y0, "output")
    for name, a, b in zip(["x", "router weights", "down table", "up table"], g1, g0, strict=True):
        if name.endswith("table"):
            assert a.is_sparse == sparse_grads
            a = a.to_dense()
        _assert_close_f32(a, b, f"grad of {name}")


@pytest.mark.parametrize("tokens,hk,d", [(1, 1, 1), (5, 3, 7), (4, 33, 130)])
def test_triton_kernels_handle_ragged_block_shapes(tokens, hk, d):
    """Sizes that are not powers of two, and d_model above one register block of rows."""
    x, indices, weights, down, up, probe = _inputs(tokens, hk, d, n=9, seed=3)
    y0, g0 = _run(lambda *a: experts_torch(*a, F.gelu), x, indices, weights, down, up, probe)
    y1, g1 = _run(lambda *a: experts_triton(*a, "gelu"), x, indices, weights, down, up, probe)
    _assert_close_f32(y1, y0, "output")
    for a, b in zip(g1, g0, strict=True):
        _assert_close_f32(a, b, "gradient")


def test_chunked_sparse_table_gradients_hold_exactly_the_retrieved_rows():
    x, indices, weights, down, up, probe = _inputs(n=400)
    _, dense = _run(lambda *a: experts_chunked(*a, F.gelu, 4, False), x, indices, weights, down, up, probe)
    _, sparse = _run(lambda *a: experts_chunked(*a, F.gelu, 4, True), x, indices, weights, down, up, probe)
    for s, d in zip(sparse[2:], dense[2:], strict=True):
        assert s.is_sparse and s.is_coalesced()
        assert torch.equal(s.indices()[0], indices.unique())  # one row per retrieved expert, no others
        torch.testing.assert_close(s.to_dense(), d, rtol=0, atol=0)


def test_peer_layer_triton_impl_equals_chunked_including_router_gradients():
    torch.manual_seed(0)
    layer = PEER(d_model=16, n_experts=64, heads=2, k=3, d_key=8, impl="chunked")
    x = torch.randn(2, 5, 16)
    probe = torch.randn(2, 5, 16)
    results = []
    for impl in ("chunked", "triton"):
        layer.impl = impl
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        (y * probe).sum().backward()
        results.append((y, {n: p.grad.to_dense().clone() for n, p in layer.named_parameters()}))
    (y0, g0), (y1, g1) = results
    _assert_close_f32(y1, y0, "output")
    assert g0.keys() == g1.keys() and "router.query.weight" in g0
    for name in g0:
        _assert_close_f32(g1[name], g0[name], f"grad of {name}")


def test_auto_impl_is_chunked_on_cpu_and_missing_triton_is_a_config_error(monkeypatch):
    layer = PEER(d_model=8, n_experts=16, heads=1, k=2, d_key=4)
    assert layer.impl == "auto" and layer.resolved_impl(torch.zeros(1, 8)) == "chunked"
    monkeypatch.setattr(peer_module, "triton_available", lambda: False)
    with pytest.raises(MixerConfigError, match=r"layer.impl='triton'.*not installed"):
        PEER(d_model=8, n_experts=16, heads=1, k=2, d_key=4, impl="triton")
