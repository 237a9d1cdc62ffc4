"""Brute-force product-key retrieval for the float64 references: every one of the N keys scored, each head's top-k
taken by a full sort, and the chosen rows summed token by token."""

from __future__ import annotations

import torch


def reference_queries(router, x):
    q = x @ router.query.weight.T
    if router.query_norm_kind == "batch":  # training-mode BatchNorm, written out
        bn = router.norm
        q = (q - q.mean(0)) / torch.sqrt(q.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    q = q.view(x.shape[0], router.heads, router.d_key)
    if router.query_norm_kind == "layer":
        ln = router.norm
        q = (q - q.mean(-1, keepdim=True)) / torch.sqrt(q.var(-1, unbiased=False, keepdim=True) + ln.eps) * ln.weight + ln.bias
    if router.qk_norm:  # each half to unit RMS, then / sqrt(half)
        half = router.d_key // 2
        q = torch.cat([rms(h) / half**0.5 for h in q.split(half, dim=-1)], dim=-1)
    return q


def rms(v):
    """``v`` scaled to unit root-mean-square over its last dimension (``F.rms_norm``'s default eps)."""
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + torch.finfo(v.dtype).eps)


def reference_retrieval(router, x):
    """Score every one of the N product keys; take each head's top-k; router weights."""
    q = reference_queries(router, x)  # (T, h, d_key)
    n = router.n
    weights, indices = [], []
    for h in range(router.heads):
        keys = router.keys[0 if router.keys.shape[0] == 1 else h]  # (2, n, d_key/2)
        if router.qk_norm:
            keys = rms(keys)
        a = torch.arange(n * n) // n
        b = torch.arange(n * n) % n
        full = torch.cat([keys[0][a], keys[1][b]], dim=-1)  # (N, d_key): key i = [c_a; c'_b], i = a*n + b
        scores = q[:, h] @ full.T  # (T, N)
        top = scores.topk(router.k, dim=-1)
        w = top.values.softmax(-1) if router.score_fn == "softmax" else top.values.sigmoid()
        weights.append(w)
        indices.append(top.indices)
    return torch.stack(weights, 1), torch.stack(indices, 1)  # (T, h, k)


def explicit_sum(layer, x, row):
    """Brute-force retrieval, then ``sum_h sum_j g_thj * row(t, i_thj)`` written out token by token."""
    weights, indices = reference_retrieval(layer.router, x)
    out = []
    for t in range(x.shape[0]):
        acc = torch.zeros_like(x[t])
        for h in range(layer.heads):
            for j in range(layer.k):
                acc = acc + weights[t, h, j] * row(t, indices[t, h, j])
        out.append(acc)
    return torch.stack(out), indices
