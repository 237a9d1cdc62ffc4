"""Product-key top-k equals brute-force top-k over all N = n^2 sums (float64, property-based, ties included)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.product_keys import ProductKeyRouter, check_product_sizes, product_topk


def brute_force(s1, s2, k):
    """Sort all n^2 sums by (score desc, flat index asc): the exact reference, ties included."""
    sums = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # (..., n*n), flat index a*n + b
    order = sums.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return sums.gather(-1, order), order


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 24), data=st.data(), batch=st.integers(1, 4), ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_product_topk_equals_brute_force(n, data, batch, ties, seed):
    k = data.draw(st.integers(1, n))
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct integer values: many exact ties, at the k boundary too
        s1 = torch.randint(-3, 4, (batch, n), generator=g).double()
        s2 = torch.randint(-3, 4, (batch, n), generator=g).double()
    else:
        s1, s2 = torch.randn(batch, n, generator=g, dtype=torch.float64), torch.randn(batch, n, generator=g, dtype=torch.float64)
    ref_v, ref_i = brute_force(s1, s2, k)
    v, i = product_topk(s1, s2, k, stable=True)
    assert torch.equal(v, ref_v)
    assert torch.equal(i, ref_i)
    # The fast path returns the same scores, and the same indices when there are no ties.
    fv, fi = product_topk(s1, s2, k)
    assert torch.equal(fv, ref_v)
    if not ties:
        assert torch.equal(fi, ref_i)
    else:  # whatever it picks among equals, each index really has the score it reports
        sums = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)
        assert torch.equal(sums.gather(-1, fi), fv)


def test_ties_are_deterministic():
    s = torch.zeros(2, 8, dtype=torch.float64)
    v, i = product_topk(s, s, 5, stable=True)
    assert i.tolist() == [[0, 1, 2, 3, 4]] * 2


@pytest.mark.parametrize("n_keys,heads,k,d_key,message", [
    (1000, 8, 16, 64, "layer.n_experts=1000: must be a perfect square"),
    (16384, 8, 129, 64, "layer.k=129: must be in [1, sqrt(n_experts)=128]"),
    (16384, 8, 16, 63, "layer.d_key=63: must be an even number"),
    (16384, 0, 16, 64, "layer.heads=0: must be >= 1"),
    (0, 8, 16, 64, "layer.n_experts=0: must be a perfect square"),
])
def test_size_errors(n_keys, heads, k, d_key, message):
    with pytest.raises(MixerConfigError) as info:
        check_product_sizes("layer.n_experts", n_keys, heads, k, d_key)
    assert message in str(info.value)


def test_router_bad_options():
    with pytest.raises(MixerConfigError, match="layer.query_norm='group'"):
        ProductKeyRouter(16, 64, 2, 4, 8, query_norm="group")
    with pytest.raises(MixerConfigError, match="layer.score='relu'"):
        ProductKeyRouter(16, 64, 2, 4, 8, score="relu")
