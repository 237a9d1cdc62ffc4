"""``layer.sparse_grads``: auto chooses sparse rows where they pay and can be reduced, dense otherwise (NCCL); both
give the same update; forcing sparse under NCCL is a one-line config error naming the key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peerlab.mixers import sparse_grads
from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.peer import PEER
from peerlab.optim import LazyAdamW, clip_grad_norm

HYPER = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}


@pytest.mark.parametrize("mode,backend,world,want", [
    ("auto", None, 1, "auto"), (True, None, 1, True), (False, None, 1, False),
    ("auto", "gloo", 2, True), (True, "gloo", 2, True), (False, "gloo", 2, False),
    ("auto", "nccl", 8, False), (False, "nccl", 8, False), ("auto", "ucc", 4, False), ("auto", "nccl", 1, False),
    ("auto", "gloo", 1, True),
])
def test_resolution_per_backend(mode, backend, world, want):
    assert sparse_grads.resolve(mode, backend, world) == want


@pytest.mark.parametrize("backend", ["nccl", "ucc"])
def test_forced_sparse_under_a_backend_without_sparse_allreduce_is_one_line(backend):
    with pytest.raises(MixerConfigError) as err:
        sparse_grads.resolve(True, backend, 8)
    message = str(err.value)
    assert message.startswith(f"layer.sparse_grads=true: the '{backend}' process group cannot all-reduce sparse")
    assert "\n" not in message and "layer.sparse_grads=auto" in message


def test_lightning_setup_settles_the_tables_for_the_backend(monkeypatch):
    """What the LightningModule does once the process group exists, before DDP reads ``Embedding.sparse``."""
    from peerlab.lit_module import LanguageModel

    layer = {"_target_": "peerlab.mixers.peer.PEER", "n_experts": 64, "heads": 2, "k": 2, "d_key": 8}
    model = {"name": "t", "depth": 2, "aspect_ratio": 16, "head_dim": 16, "d_model": None, "ffw_mult": 4.0,
             "activation": "gelu", "sparse_blocks": "middle"}
    for requested, backend, want_sparse in [("auto", "nccl", False), ("auto", "gloo", True), (False, "gloo", False)]:
        module = LanguageModel(model, {**layer, "sparse_grads": requested}, {}, 64, 8, 8, 10, 1e9)
        monkeypatch.setattr(sparse_grads, "process_group", lambda b=backend: (b, 2))
        monkeypatch.setattr("peerlab.mixers.peer.process_group", lambda b=backend: (b, 2))
        monkeypatch.setattr("peerlab.lit_module.process_group", lambda b=backend: (b, 2))
        module.setup("fit")
        peer = module.model.mixers[0]
        assert peer.down.sparse is peer.up.sparse is want_sparse
        # Sparse tables stay out of DDP's reducer (which wraps this module) and are averaged by the module itself.
        tables = ["model.blocks.0.mixer.down.weight", "model.blocks.0.mixer.up.weight"]
        assert getattr(module, "_ddp_params_and_buffers_to_ignore", []) == (tables if want_sparse else [])
        assert module._reduced_here == ([peer.down.weight, peer.up.weight] if want_sparse else [])
        x = torch.randn(1, 4, 32)
        peer(x).sum().backward()
        assert peer.up.weight.grad.is_sparse is want_sparse
    module = LanguageModel(model, {**layer, "sparse_grads": True}, {}, 64, 8, 8, 10, 1e9)
    monkeypatch.setattr("peerlab.mixers.peer.process_group", lambda: ("nccl", 8))
    with pytest.raises(MixerConfigError, match="layer.sparse_grads=true: the 'nccl' process group"):
        module.setup("fit")


def test_bad_mode_is_a_config_error():
    with pytest.raises(MixerConfigError, match=r"layer.sparse_grads='yes': allowed: auto, true, false"):
        PEER(16, n_experts=64, heads=1, k=2, d_key=8, sparse_grads="yes")


@pytest.mark.parametrize("impl", ["torch", "chunked"])
def test_auto_is_sparse_only_in_a_step_that_retrieves_fewer_rows_than_n(impl):
    torch.manual_seed(0)
    few = PEER(16, n_experts=400, heads=2, k=3, d_key=8, impl=impl)  # 6 tokens x 6 retrievals < 400 rows
    few(torch.randn(1, 6, 16)).sum().backward()
    assert few.up.weight.grad.is_sparse and few.down.weight.grad.is_sparse
    every = PEER(16, n_experts=4, heads=2, k=2, d_key=8, impl=impl)  # 64 tokens x 4 retrievals cover all 4 rows
    every(torch.randn(1, 64, 16)).sum().backward()
    assert not every.up.weight.grad.is_sparse and not every.down.weight.grad.is_sparse


def _train(mode, n_experts: int, steps: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    layer = PEER(16, n_experts=n_experts, heads=2, k=2, d_key=8, impl="chunked", sparse_grads=mode)
    opt = LazyAdamW(layer.parameters(), **HYPER)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x, target = torch.randn(2, 32, 16, generator=g), torch.randn(2, 32, 16, generator=g)
        F.mse_loss(layer(x), target).backward()
        clip_grad_norm(layer.parameters(), 0.01)  # small: clipping is active in every step
        opt.step()
    return [p.detach().clone() for p in layer.parameters()]


def test_sparse_and_dense_give_the_same_update_when_every_row_is_retrieved():
    dense, sparse, auto = (_train(mode, n_experts=9, steps=6) for mode in (False, True, "auto"))
    for a, b, c in zip(dense, sparse, auto, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-7)


def test_sparse_and_dense_give_the_same_first_update_whatever_rows_are_retrieved():
    dense, sparse, auto = (_train(mode, n_experts=4096, steps=1) for mode in (False, True, "auto"))
    for a, b, c in zip(dense, sparse, auto, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, b, rtol=0, atol=0)  # auto is sparse here: the very same computation
