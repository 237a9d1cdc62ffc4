"""The LM head's next-token loss, whole or in chunks of tokens.

Whole: ``cross_entropy(linear(h, W).float(), targets)``, which keeps float32 log-probabilities of every token of
the micro-batch (4 x vocab bytes each, 13 GB for 16 x 2048 tokens of GPT-2's vocabulary) and, in backward, two more
such tensors. Chunked (``trainer.loss_chunk_tokens``): the forward pass takes ``chunk`` tokens at a time and,
when gradients are needed, computes each chunk's gradients for ``h`` and ``W`` right away with the same operations
(under the same autocast), keeping only those: one chunk's logits exist at a time and nothing vocab-sized is saved
for the backward pass, which only scales the stored gradients by its incoming gradient. No extra matmul is done: the
head's forward and backward each run once, as in the whole loss.

The values equal the whole loss's up to float rounding (the sum runs chunk by chunk); tests/test_lm_loss.py checks
values and gradients in float64, float32 and bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # targets with this value are not scored (cross_entropy's default ignore_index)


def _chunk_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight).float(), targets, reduction="sum", ignore_index=IGNORE)


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        need_h, need_w = ctx.needs_input_grad[:2]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        w = weight.detach().requires_grad_(need_w)
        for start in range(0, h.shape[0], chunk):
            piece = h[start : start + chunk].detach().requires_grad_(need_h)
            with torch.enable_grad():
                loss = _chunk_sum(piece, w, targets[start : start + chunk])
            wanted = [t for t, need in ((piece, need_h), (w, need_w)) if need]
            if wanted:
                grads = iter(torch.autograd.grad(loss, wanted))
                if need_h:
                    grad_h[start : start + chunk] = next(grads)
                if need_w:
                    grad_w += next(grads)
            total += loss.detach()
        count = (targets != IGNORE).sum()
        ctx.grads, ctx.count = (grad_h, grad_w), count
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        scale = grad_out / ctx.count
        return (grad_h * scale.to(grad_h.dtype) if grad_h is not None else None,
                grad_w * scale.to(grad_w.dtype) if grad_w is not None else None, None, None)


def lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy of ``h`` (tokens, d_model) through the head ``weight`` (vocab, d_model) against
    ``targets`` (tokens,); in chunks of ``chunk_tokens`` when the micro-batch holds more tokens than that."""
    if chunk_tokens <= 0 or h.shape[0] <= chunk_tokens:
        return F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=IGNORE)
    return _ChunkedLoss.apply(h, weight, targets, chunk_tokens)
