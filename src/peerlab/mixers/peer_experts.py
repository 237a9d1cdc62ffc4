"""The expert part of PEER: ``y_t = sum_j g_tj act(u_{i_tj} . x_t) v_{i_tj}`` for retrieved indices ``i`` and
router weights ``g``. Implementations with the same values and gradients:

- ``torch``: plain autograd. Gathers the down rows ``u`` (tokens x h*k x d_model, kept for backward), one batched
  mat-vec, an ``embedding_bag`` weighted sum for the up rows. The readable reference.
- ``chunked``: a custom autograd function that keeps only ``x``, indices, router weights and pre-activations
  (tokens x h*k scalars) for backward. Row gathers that must be dotted (``u.x`` forward, ``v.dy`` backward) go
  through one reused buffer, ``chunk_tokens`` tokens at a time; every weighted row *sum* is an ``embedding_bag``,
  which never materialises rows: ``y``, ``dx = sum_j dpre_tj u_j``, and the table gradients, computed per used
  row as a bag over the tokens that retrieved it (indices sorted once). The table gradients are therefore
  ``(rows used) x d_model``, whatever N is; they are returned sparse (``sparse_grads``) for an optimizer that
  touches only those rows (:class:`peerlab.optim.LazyAdamW`), or scattered into a dense N x d_model tensor
  (``sparse_grads="auto"``: sparse only in a step that retrieved fewer than N rows; see ``sparse_grads.py``).
- ``triton`` (``peer_triton.py``): the same function with fused GPU kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from peerlab.mixers.row_groups import RowGroups
from peerlab.mixers.sparse_grads import GradMode, count_rows, sparse_this_step

Activation = Callable[[torch.Tensor], torch.Tensor]


def experts_torch(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                  up: torch.Tensor, act: Activation, sparse_grads: GradMode = False) -> torch.Tensor:
    """``x`` (tokens, d), ``indices``/``weights`` (tokens, h*k), tables (N, d) -> (tokens, d)."""
    if sparse_grads == "auto":
        sparse_grads = sparse_this_step("auto", count_rows(indices), down.shape[0])
    u = F.embedding(indices, down, sparse=sparse_grads)  # (tokens, h*k, d)
    hidden = act(torch.bmm(u, x.unsqueeze(-1)).squeeze(-1))  # (tokens, h*k)
    return F.embedding_bag(indices, up, per_sample_weights=hidden * weights, mode="sum", sparse=sparse_grads)


def gathered_dots(table: torch.Tensor, indices: torch.Tensor, vectors: torch.Tensor, chunk: int) -> torch.Tensor:
    """``out[t, j] = table[indices[t, j]] . vectors[t]``, gathering rows into one reused buffer, ``chunk`` tokens
    at a time (fresh allocations of gathered rows page-fault and run several times slower)."""
    tokens, hk = indices.shape
    out = vectors.new_empty(tokens, hk)
    chunk = min(chunk, tokens)
    buf = table.new_empty(chunk * hk, table.shape[1])
    for s in range(0, tokens, chunk):
        idx = indices[s : s + chunk]
        rows = buf[: idx.numel()]
        torch.index_select(table, 0, idx.flatten(), out=rows)
        out[s : s + chunk] = torch.bmm(rows.view(idx.shape[0], hk, -1), vectors[s : s + chunk].unsqueeze(-1)).squeeze(-1)
    return out


def activation_and_grad(act: Activation, pre: torch.Tensor, grad_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``act(pre)`` and ``grad_a * act'(pre)`` for any activation, through autograd on a (tokens, h*k) tensor."""
    pre = pre.detach().requires_grad_()
    with torch.enable_grad():
        a = act(pre)
    (grad_pre,) = torch.autograd.grad(a, pre, grad_a)
    return a.detach(), grad_pre


class _ChunkedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, weights, down, up, act, chunk, sparse_grads):
        with torch.no_grad():
            pre = gathered_dots(down, indices, x, chunk)  # u.x, (tokens, h*k): small, kept for backward
            y = F.embedding_bag(indices, up, per_sample_weights=act(pre) * weights, mode="sum")
        ctx.save_for_backward(x, indices, weights, pre, down, up)
        ctx.act, ctx.chunk, ctx.sparse_grads = act, chunk, sparse_grads
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, indices, weights, pre, down, up = ctx.saved_tensors
        need_x, _, need_g, need_down, need_up = ctx.needs_input_grad[:5]
        grad_y = grad_y.contiguous()
        grad_w = gathered_dots(up, indices, grad_y, ctx.chunk)  # v_i . dy
        a, grad_pre = activation_and_grad(ctx.act, pre, grad_w * weights)
        grad_x = F.embedding_bag(indices, down, per_sample_weights=grad_pre, mode="sum") if need_x else None
        grad_g = grad_w * a if need_g else None
        grad_down = grad_up = None
        if need_down or need_up:
            n = down.shape[0]
            groups = RowGroups(indices, n)
            if need_down:
                grad_down = groups.as_grad(groups.row_sums(grad_pre, x), n, ctx.sparse_grads)
            if need_up:
                grad_up = groups.as_grad(groups.row_sums(a * weights, grad_y), n, ctx.sparse_grads)
        return grad_x, None, grad_g, grad_down, grad_up, None, None, None


def experts_chunked(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                    up: torch.Tensor, act: Activation, chunk_tokens: int = 64,
                    sparse_grads: GradMode = False) -> torch.Tensor:
    return _ChunkedExperts.apply(x, indices, weights, down, up, act, chunk_tokens, sparse_grads)
