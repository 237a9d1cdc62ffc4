"""The expert part of PEER: ``y_t = sum_j g_tj act(u_{i_tj} . x_t) v_{i_tj}`` for retrieved indices ``i`` and
router weights ``g``. Two implementations with the same values and gradients:

- ``torch``: gather the down rows ``u`` (tokens x h*k x d_model, kept by autograd for backward), one batched
  mat-vec, and an ``embedding_bag`` weighted sum for the up rows (never materialised).
- ``chunked``: a custom autograd function that keeps only ``x``, indices, router weights and pre-activations for
  backward and recomputes row gathers in chunks of ``chunk_tokens`` tokens, so peak memory no longer grows with
  tokens x h*k x d_model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def experts_torch(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                  up: torch.Tensor, act: Activation) -> torch.Tensor:
    """``x`` (tokens, d), ``indices``/``weights`` (tokens, h*k), tables (N, d) -> (tokens, d)."""
    u = F.embedding(indices, down)  # (tokens, h*k, d)
    hidden = act(torch.bmm(u, x.unsqueeze(-1)).squeeze(-1))  # (tokens, h*k)
    return F.embedding_bag(indices, up, per_sample_weights=hidden * weights, mode="sum")


class _ChunkedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, weights, down, up, act, chunk):
        y = x.new_empty(x.shape)
        pre = x.new_empty(indices.shape)  # pre-activations u.x, (tokens, h*k): small, kept for backward
        with torch.no_grad():
            for s in range(0, x.shape[0], chunk):
                idx = indices[s : s + chunk]
                pre[s : s + chunk] = torch.bmm(F.embedding(idx, down), x[s : s + chunk].unsqueeze(-1)).squeeze(-1)
                w = act(pre[s : s + chunk]) * weights[s : s + chunk]
                y[s : s + chunk] = F.embedding_bag(idx, up, per_sample_weights=w, mode="sum")
        ctx.save_for_backward(x, indices, weights, pre, down, up)
        ctx.act, ctx.chunk = act, chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, indices, weights, pre, down, up = ctx.saved_tensors
        act, chunk = ctx.act, ctx.chunk
        need_x, _, need_g, need_down, need_up = ctx.needs_input_grad[:5]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_g = torch.zeros_like(weights) if need_g else None
        grad_down = torch.zeros_like(down) if need_down else None
        grad_up = torch.zeros_like(up) if need_up else None
        for s in range(0, x.shape[0], chunk):
            idx, xs, gy = indices[s : s + chunk], x[s : s + chunk], grad_y[s : s + chunk]
            g, h = weights[s : s + chunk], pre[s : s + chunk].detach().requires_grad_()
            with torch.enable_grad():  # act'(h) for any activation, on a (chunk, h*k) tensor
                a = act(h)
            grad_w = torch.bmm(F.embedding(idx, up), gy.unsqueeze(-1)).squeeze(-1)  # v_i . grad_y
            (grad_h,) = torch.autograd.grad(a, h, grad_w * g)
            a = a.detach()
            if need_g:
                grad_g[s : s + chunk] = grad_w * a
            if need_x:
                grad_x[s : s + chunk] = torch.bmm(grad_h.unsqueeze(1), F.embedding(idx, down)).squeeze(1)
            flat = idx.flatten()
            if need_down:
                grad_down.index_add_(0, flat, (grad_h.unsqueeze(-1) * xs.unsqueeze(1)).flatten(0, 1))
            if need_up:
                grad_up.index_add_(0, flat, ((a * g).unsqueeze(-1) * gy.unsqueeze(1)).flatten(0, 1))
        return grad_x, None, grad_g, grad_down, grad_up, None, None


def experts_chunked(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                    up: torch.Tensor, act: Activation, chunk_tokens: int = 256) -> torch.Tensor:
    return _ChunkedExperts.apply(x, indices, weights, down, up, act, chunk_tokens)
