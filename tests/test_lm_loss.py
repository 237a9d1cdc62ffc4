"""The chunked LM loss (``trainer.loss_chunk_tokens``) gives the whole loss's values and gradients, and activation
checkpointing (``trainer.activation_checkpointing``) the same gradients and BatchNorm statistics as none."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

from peerlab.builders import build_model
from peerlab.lm_loss import IGNORE, lm_loss
from peerlab.sizes import load_layer


# The loss takes log-softmax in float32 whatever the model's dtype (``logits.float()``, as before chunking), so
# float64 agrees to float32's precision; bf16 autocast rounds each chunk's head gradient to bf16 before summing.
@pytest.mark.parametrize("dtype,autocast,rtol", [(torch.float64, False, 1e-5), (torch.float32, False, 1e-5),
                                                  (torch.float32, True, 2e-2)], ids=["fp64", "fp32", "bf16-autocast"])
def test_chunked_loss_equals_the_whole_loss_and_its_gradients(dtype, autocast, rtol):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(100, 24, dtype=dtype, generator=gen)
    w = (0.3 * torch.randn(70, 24, dtype=dtype, generator=gen))
    t = torch.randint(0, 70, (100,), generator=gen)
    t[::7] = IGNORE  # ignored targets count neither in the sum nor in the mean
    results = []
    for chunk in (0, 16, 33):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            loss = lm_loss(hh, ww, t, chunk)
        (3.0 * loss).backward()  # a scaled incoming gradient reaches both inputs
        results.append((loss.detach(), hh.grad, ww.grad))
    whole = results[0]
    for loss, gh, gw in results[1:]:
        assert loss.dtype == whole[0].dtype == torch.float32
        torch.testing.assert_close(loss, whole[0], rtol=1e-6, atol=0)  # the loss itself is float32 either way
        torch.testing.assert_close(gh, whole[1], rtol=rtol, atol=rtol * whole[1].abs().max().item())
        torch.testing.assert_close(gw, whole[2], rtol=rtol, atol=rtol * whole[2].abs().max().item())


def test_chunked_loss_without_gradients_and_the_threshold():
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(50, 8, generator=gen), torch.randn(30, 8, generator=gen)
    t = torch.randint(0, 30, (50,), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(h, w, t, 7), lm_loss(h, w, t, 0), rtol=1e-6, atol=0)
    h, w = h.requires_grad_(), w.requires_grad_()
    # no chunks at or above the micro-batch: the whole loss's path; below it, the chunked function
    assert "ChunkedLoss" not in type(lm_loss(h, w, t, 50).grad_fn).__name__
    assert "ChunkedLoss" not in type(lm_loss(h, w, t, 0).grad_fn).__name__
    assert "ChunkedLoss" in type(lm_loss(h, w, t, 49).grad_fn).__name__


MODEL = {"name": "t", "depth": 3, "aspect_ratio": 32, "head_dim": 16, "d_model": 48, "ffw_mult": 4.0,
         "activation": "gelu", "sparse_blocks": "middle"}


@pytest.mark.parametrize("layer", ["ffw", "peer_matched", "pkm_matched", "moe_matched"])
def test_checkpointed_blocks_give_the_same_gradients_and_batchnorm_statistics(layer):
    torch.manual_seed(0)
    base = build_model(MODEL, load_layer(layer), 200, 16).train()
    x = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(2))
    runs = []
    for checkpointed in (False, True):
        model = copy.deepcopy(base)
        model.set_activation_checkpointing(checkpointed)
        loss = model.loss(x, x.roll(-1, 1))
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None},
                     {n: b.clone() for n, b in model.named_buffers()}))
    (l0, g0, b0), (l1, g1, b1) = runs
    assert torch.equal(l0, l1) and g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    for name in b0:  # PEER's and PKM's query BatchNorm counts the batch once, not again in the recomputation
        assert torch.equal(b0[name], b1[name]), name


def test_recomputation_without_restoring_batchnorm_would_count_a_batch_twice(monkeypatch):
    import peerlab.model as model_module

    monkeypatch.setattr(model_module, "_running_stats_kept", lambda module: nullcontext())
    torch.manual_seed(0)
    base = build_model(MODEL, load_layer("peer_matched"), 200, 16).train()
    plain, checkpointed = copy.deepcopy(base), copy.deepcopy(base)
    checkpointed.set_activation_checkpointing(True)
    x = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(2))
    for m in (plain, checkpointed):
        m.loss(x, x).backward()
    counts = [dict(m.named_buffers())["blocks.1.mixer.router.norm.num_batches_tracked"].item() for m in (plain, checkpointed)]
    assert counts == [1, 2]  # the guard above is what keeps them equal
