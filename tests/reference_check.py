"""One float64 comparison of a mixer against a slow reference: outputs and the gradients of input and parameters."""

from __future__ import annotations

import torch


def assert_matches_reference(layer, reference, tokens: int = 7, seed: int = 1):
    """``reference(layer, x)`` computes ``(y, extra)`` from ``x`` of shape ``(tokens, d_model)`` with the layer's own
    parameters; returns ``extra`` for further checks."""
    torch.manual_seed(seed)
    layer = layer.double().train()
    x = torch.randn(tokens, layer.d_model, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(tokens, layer.d_model, dtype=torch.float64)
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    y = layer(x.unsqueeze(0)).squeeze(0)
    grads = torch.autograd.grad((y * probe).sum(), [x, *params], allow_unused=True)
    y_ref, extra = reference(layer, x)
    grads_ref = torch.autograd.grad((y_ref * probe).sum(), [x, *params], allow_unused=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for name, g, g_ref in zip(["x"] + [n for n, _ in named], grads, grads_ref, strict=True):
        g = torch.zeros_like(g_ref) if g is None else g.to_dense()  # expert tables may have sparse grads
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"grad of {name}: {m}")
    assert grads[0].abs().sum() > 0
    return extra
