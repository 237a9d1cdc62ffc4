"""Exact top-k retrieval over N = n^2 product keys, shared by PEER and PKM.

A product key is the concatenation ``[c_a; c'_b]`` of two sub-keys, so its score against a query ``[q1; q2]`` is
``q1.c_a + q2.c'_b``. Any of the top-k products has both halves among the top-k of its own half (if ``a`` were
not, the k sub-keys above it, paired with ``b``, would all outrank ``(a, b)``), so the top-k of the ``k^2`` sums of
the two half top-k's is exactly the top-k over all N keys, at O((n + k^2) d_key) cost instead of O(N d_key).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from peerlab.mixers.base import ActivationMemory, MixerConfigError
from peerlab.mixers.usage import usage_metrics


def _topk(scores: torch.Tensor, k: int, stable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not stable:
        return scores.topk(k, dim=-1)
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    values, indices = scores.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def product_topk(
    scores1: torch.Tensor, scores2: torch.Tensor, k: int, stable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores1[..., a] + scores2[..., b]`` over all ``(a, b)``.

    Returns ``(values, indices)`` of shape ``(..., k)``, sorted by descending value, with flat indices
    ``a * n + b`` (``n = scores2.shape[-1]``). With ``stable=True`` ties are broken toward the lower flat index,
    exactly as a brute-force sort of all N sums would; the default uses ``torch.topk`` (faster; the order among
    exactly equal scores is then unspecified).
    """
    n = scores2.shape[-1]
    if scores1.shape != scores2.shape:
        raise ValueError(f"sub-key score shapes differ: {tuple(scores1.shape)} vs {tuple(scores2.shape)}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}]")
    v1, i1 = _topk(scores1, k, stable)  # (..., k), sorted by descending score
    v2, i2 = _topk(scores2, k, stable)
    if not stable:
        # Pair (a, b) of the sorted halves is outranked or tied by the (a+1)(b+1) - 1 pairs (a' <= a, b' <= b), so
        # only pairs with (a+1)(b+1) <= k can be among the top k: about k ln k candidates instead of k^2 (50 for
        # k = 16). Equal scores may then resolve to another index than a full sort's, as topk's may anyway.
        rows, cols = _dominance_pairs(k, scores1)
        candidates = v1.index_select(-1, rows) + v2.index_select(-1, cols)
        flat = i1.index_select(-1, rows) * n + i2.index_select(-1, cols)
        values, pos = candidates.topk(k, dim=-1)
        return values, flat.gather(-1, pos)
    candidates = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).flatten(-2)  # (..., k*k)
    flat = (i1.unsqueeze(-1) * n + i2.unsqueeze(-2)).flatten(-2)  # (..., k*k)
    # Lexicographic (score desc, index asc): sort by index, then stably by score.
    flat, order = flat.sort(dim=-1)
    values, pos = _topk(candidates.gather(-1, order), k, stable=True)
    return values, flat.gather(-1, pos)


class _ChosenScores(torch.autograd.Function):
    """Scores of the chosen keys, ``q1 . c1[rows1] + q2 . c2[rows2]``, whose forward values are passed in (they
    were computed for the selection, without autograd). Backward scatters each (token, head)'s score gradients onto
    its half's sqrt(N) sub-keys and runs the two matmuls of a dense scoring backward; nothing of size
    (tokens, heads, sqrt N) is kept from the forward pass."""

    @staticmethod
    def forward(ctx, q1, q2, keys, rows1, rows2, values):
        ctx.save_for_backward(q1, q2, keys, rows1, rows2)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        q1, q2, keys, rows1, rows2 = ctx.saved_tensors
        key_sets, _, n, half = keys.shape
        tokens, heads, _ = grad.shape
        grad_q, grad_keys = [], torch.zeros_like(keys)
        for i, (q, rows) in enumerate(((q1, rows1), (q2, rows2))):
            weights = grad.new_zeros(tokens, heads, n).scatter_add_(2, rows, grad)  # d loss / d (q . c) per sub-key
            if key_sets == 1:  # sub-keys shared by all heads
                grad_q.append(torch.matmul(weights, keys[0, i]))
                grad_keys[0, i] = weights.reshape(-1, n).t() @ q.reshape(-1, half)
            else:
                per_head = weights.transpose(0, 1)  # (heads, tokens, n)
                grad_q.append(torch.bmm(per_head, keys[:, i]).transpose(0, 1))
                grad_keys[:, i] = torch.bmm(per_head.transpose(1, 2), q.transpose(0, 1))
        return grad_q[0], grad_q[1], grad_keys, None, None, None


@functools.lru_cache(maxsize=32)
def _dominance_positions(k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions (a, b) in two descending top-k lists with (a + 1)(b + 1) <= k: the only pairs that can rank top k."""
    pairs = [(a, b) for a in range(k) for b in range(k) if (a + 1) * (b + 1) <= k]
    rows, cols = zip(*pairs, strict=True)
    return rows, cols


@functools.lru_cache(maxsize=32)
def _dominance_tensors(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = _dominance_positions(k)
    return torch.tensor(rows, device=device), torch.tensor(cols, device=device)


def _dominance_pairs(k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_dominance_positions` as index tensors on ``like``'s device, made once per device; under a fake mode
    (peerlab.parallel.fake_step) made afresh, since a cached real tensor cannot meet fake ones."""
    from torch._subclasses.fake_tensor import is_fake

    return (_dominance_tensors.__wrapped__ if is_fake(like) else _dominance_tensors)(k, like.device)


QUERY_NORMS = ("batch", "layer", "none")
SCORE_FNS = ("softmax", "sigmoid")


def check_product_sizes(layer: str, n_keys: int, heads: int, k: int, d_key: int) -> int:
    """``sqrt(n_keys)``, after checking every size; errors name the config key."""
    n = math.isqrt(n_keys) if n_keys > 0 else 0
    if n_keys < 1 or n * n != n_keys:
        raise MixerConfigError(f"{layer}={n_keys}: must be a perfect square (e.g. 1024**2 = 1048576)")
    if heads < 1:
        raise MixerConfigError(f"layer.heads={heads}: must be >= 1")
    if not 1 <= k <= n:
        raise MixerConfigError(f"layer.k={k}: must be in [1, sqrt({layer.split('.')[-1]})={n}]")
    if d_key < 2 or d_key % 2:
        raise MixerConfigError(f"layer.d_key={d_key}: must be an even number >= 2 (it is split into two halves)")
    return n


class ProductKeyRouter(nn.Module):
    """Query network + product keys: maps tokens to ``heads`` sets of ``k`` key indices and router weights.

    ``query_norm="batch"`` (PKM's and the paper's default) normalises queries with batch statistics in training,
    which mixes information across the tokens of a batch, later ones included; evaluation uses running statistics
    and is causal. ``"layer"`` (per-head LayerNorm) and ``"none"`` are causal in training too.

    ``qk_norm=True`` (Memory+'s query/key normalisation) scores ``rms(q_half) . rms(c) / sqrt(d_key / 2)`` for each
    half and sub-key: a cosine similarity scaled so that random scores have unit variance, as PKM's init gives
    them about; the sub-keys' gradient flows through their normalisation.
    """

    count_usage = True  # False while a padding batch (sharded validation) runs: see Mixer.count_usage

    def __init__(
        self,
        d_model: int,
        n_keys: int,
        heads: int,
        k: int,
        d_key: int,
        query_norm: str = "batch",
        shared_keys: bool = True,
        score: str = "softmax",
        stable_ties: bool = False,
        size_key: str = "layer.n_experts",
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n = check_product_sizes(size_key, n_keys, heads, k, d_key)
        if query_norm not in QUERY_NORMS:
            raise MixerConfigError(f"layer.query_norm={query_norm!r}: allowed: {', '.join(QUERY_NORMS)}")
        if score not in SCORE_FNS:
            raise MixerConfigError(f"layer.score={score!r}: allowed: {', '.join(SCORE_FNS)}")
        self.d_model, self.n_keys, self.heads, self.k, self.d_key = d_model, n_keys, heads, k, d_key
        self.query_norm_kind, self.score_fn, self.stable_ties = query_norm, score, stable_ties
        self.qk_norm = bool(qk_norm)
        self.query = nn.Linear(d_model, heads * d_key, bias=False)
        nn.init.normal_(self.query.weight, std=d_model**-0.5)
        if query_norm == "batch":
            self.norm: nn.Module = nn.BatchNorm1d(heads * d_key)
        elif query_norm == "layer":
            self.norm = nn.LayerNorm(d_key)
        else:
            self.norm = nn.Identity()
        key_sets = 1 if shared_keys else heads
        half = d_key // 2
        # (key sets, 2 halves, n, d_key/2); PKM's uniform init keeps q.c of order 1 for unit-variance queries.
        self.keys = nn.Parameter(torch.empty(key_sets, 2, self.n, half).uniform_(-(half**-0.5), half**-0.5))
        self.register_buffer("usage", torch.zeros(0, dtype=torch.float64), persistent=False)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """``(tokens, heads, d_key)`` normalised queries for ``x`` of shape ``(tokens, d_model)``."""
        q = self.query(x)
        if self.query_norm_kind == "batch":
            q = self.norm(q)
        q = q.view(-1, self.heads, self.d_key)
        return self.norm(q) if self.query_norm_kind == "layer" else q

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router weights and flat key indices, both ``(tokens, heads, k)``, for ``x`` of shape ``(tokens, d_model)``."""
        q = self.queries(x)
        q1, q2 = q.chunk(2, dim=-1)  # (tokens, heads, d_key/2) each
        sub_keys = self.keys
        if self.qk_norm:
            half = self.d_key // 2
            q1, q2 = (F.rms_norm(h, (half,)) * half**-0.5 for h in (q1, q2))
            sub_keys = F.rms_norm(sub_keys, (half,))
        # Selection needs every sub-key score but no gradient (top-k passes gradient only to the chosen entries):
        # scoring under no_grad keeps autograd from storing the (tokens, heads, n) scores and the top-k's
        # full-size gradient scatter; the chosen scores carry the gradient instead.
        with torch.no_grad():
            keys = sub_keys.expand(self.heads, -1, -1, -1) if sub_keys.shape[0] == 1 else sub_keys
            s1 = torch.einsum("thd,hnd->thn", q1, keys[:, 0])  # (tokens, heads, n)
            s2 = torch.einsum("thd,hnd->thn", q2, keys[:, 1])
            _, indices = product_topk(s1, s2, self.k, stable=self.stable_ties)
        scores = self.chosen_scores(q1, q2, s1, s2, indices, sub_keys)  # the same values, now differentiable
        weights = scores.softmax(dim=-1) if self.score_fn == "softmax" else scores.sigmoid()
        if not self.training and self.usage.numel() and self.count_usage:
            with torch.no_grad():
                self.usage.index_add_(0, indices.flatten(), weights.detach().flatten().to(torch.float64))
        return weights, indices

    def chosen_scores(self, q1: torch.Tensor, q2: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                      indices: torch.Tensor, sub_keys: torch.Tensor) -> torch.Tensor:
        """``q1 . c_a + q2 . c'_b`` for the chosen flat indices ``a * n + b``: the values already in the sub-key
        scores ``s1``/``s2``, with gradients for the queries and ``sub_keys`` (``(tokens, heads, k)``)."""
        rows1, rows2 = indices // self.n, indices % self.n
        values = s1.gather(-1, rows1) + s2.gather(-1, rows2)
        return _ChosenScores.apply(q1, q2, sub_keys, rows1, rows2, values)

    # ------------------------------------------------------------------ accounting
    def activation_memory(self, tokens: int, float_bytes: int) -> ActivationMemory:
        """Bytes of a training micro-batch of ``tokens`` in the router, which runs in its parameters' precision
        (``float_bytes`` per value): the input kept by the query projection, the queries (and their norm's input or
        statistics), the chosen sub-key rows and the router weights. Forward: both halves' sub-key scores,
        (tokens, heads, sqrt N) each, and the candidate pairs of the product top-k (about k ln k per head).
        Backward: one half's scattered score gradients and the query gradients."""
        f, h, k, dk = float_bytes, self.heads, self.k, self.d_key
        queries = {"batch": 2 * f * h * dk, "layer": 2 * f * h * dk + 2 * f * h, "none": f * h * dk}[self.query_norm_kind]
        if self.qk_norm:
            queries += f * h * dk + 2 * f * h  # the normalised halves and their inverse RMS
        per_token = f * self.d_model + queries + 2 * 8 * h * k + f * h * k  # input, queries, rows of both halves, weights
        return ActivationMemory(
            saved=tokens * per_token,
            # both halves' scores, and the candidate pairs the product top-k sums: scores and flat indices (3 each)
            forward_peak=tokens * h * (2 * f * self.n + len(_dominance_positions(k)[0]) * (3 * f + 3 * 8)),
            backward_peak=tokens * (f * h * self.n + f * h * dk) + f * self.keys.numel(),
        )

    def flops_per_token(self) -> int:
        """Query projection and both sub-key scorings. The k^2 candidate sums per head are additions, not
        multiply-adds, and are left out like softmax and top-k (at the paper's sizes: 2k adds vs 2M FLOPs)."""
        return 2 * self.d_model * self.heads * self.d_key + 2 * self.heads * self.n * self.d_key

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ expert usage (paper, Table 2)
    def reset_usage(self) -> None:
        self.usage = torch.zeros(self.n_keys, dtype=torch.float64, device=self.keys.device)

    def usage_tensors(self) -> list[torch.Tensor]:
        return [self.usage] if self.usage.numel() else []

    def usage_stats(self) -> dict[str, float]:
        return usage_metrics(self.usage)


def weighted_bag(indices: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``sum_j weights[t, j] * table[indices[t, j]]`` for each token ``t``, without materialising the rows."""
    return F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
