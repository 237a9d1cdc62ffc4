"""Global gradient-norm clipping that also accepts sparse COO gradients (torch's ``clip_grad_norm_`` does not)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from peerlab.optim.lazy_adamw import coalesced


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients so their joint L2 norm is at most ``max_norm``; returns the norm before clipping.

    Sparse gradients are coalesced first so a row retrieved several times counts once, with its summed gradient.
    """
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.tensor(0.0)
    # a DTensor's norm (FSDP's shards, memory-parallel columns: each over its own mesh) as the whole tensor's
    norms = [_whole(torch.linalg.vector_norm(g.detach().float())) for g in grads]
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device, g.dtype))
    return total


def _whole(norm: torch.Tensor) -> torch.Tensor:
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
