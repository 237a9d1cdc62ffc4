"""bf16-mixed on every PEER/PKM path, on the CPU through torch.autocast(bf16) (what Lightning's ``bf16-mixed`` uses
there) and through Triton's interpreter: the tables keep fp32 master weights, retrieval and every sum run in fp32,
and outputs and gradients match an fp32 run (tolerances below, with what sets them)."""

from __future__ import annotations

import pytest
import torch

from peerlab.mixers.peer import PEER
from peerlab.mixers.pkm import PKM

D = 48
LAYERS = {
    "peer-torch": lambda: PEER(D, n_experts=256, heads=2, k=4, d_key=16, impl="torch"),
    "peer-chunked": lambda: PEER(D, n_experts=256, heads=2, k=4, d_key=16, impl="chunked", chunk_tokens=5),
    "peer-chunked-dense": lambda: PEER(D, n_experts=256, heads=2, k=4, d_key=16, impl="chunked", sparse_grads=False),
    "peer-triton": lambda: PEER(D, n_experts=256, heads=2, k=4, d_key=16, impl="triton"),
    "pkm": lambda: PKM(D, n_memories=256, heads=2, k=4, d_key=16),
}


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


def _forward_backward(layer, x, probe, autocast: bool):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
        loss = (y.float() * probe).sum()
    loss.backward()
    grads = {name: _dense(p.grad) for name, p in layer.named_parameters() if p.grad is not None}
    return y, x.grad, grads


@pytest.mark.parametrize("name", list(LAYERS))
def test_autocast_bf16_matches_fp32(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().train()
    x = torch.randn(2, 16, D)
    probe = torch.randn(2, 16, D)
    y32, gx32, g32 = _forward_backward(layer, x, probe, autocast=False)
    y16, gx16, g16 = _forward_backward(layer, x, probe, autocast=True)
    # fp32 activations in (as bf16-mixed gives a mixer after LayerNorm): the layer computes in fp32 under autocast.
    assert y16.dtype == torch.float32 and gx16.dtype == torch.float32
    torch.testing.assert_close(y16, y32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gx16, gx32, rtol=1e-5, atol=1e-7)
    assert g16.keys() == g32.keys() and g16
    for key in g32:
        assert g16[key].dtype == torch.float32, key  # fp32 master weights, fp32 gradients
        torch.testing.assert_close(g16[key], g32[key], rtol=1e-5, atol=1e-7, msg=key)

    # bf16 activations in (a mixer fed by a bf16 op): same dtype out, and the fp32 result on those inputs, rounded.
    xb = x.to(torch.bfloat16)
    yb, gxb, _ = _forward_backward(layer, xb, probe, autocast=True)
    assert yb.dtype == torch.bfloat16 and gxb.dtype == torch.bfloat16
    y_ref, _, _ = _forward_backward(layer, xb.float(), probe, autocast=False)
    torch.testing.assert_close(yb.float(), y_ref, rtol=2**-7, atol=1e-6)


def test_triton_kernels_take_bf16_activations_with_fp32_tables():
    """The kernels load every operand as fp32 and accumulate in fp32, so bf16 activations (x, dy) against fp32
    tables give the fp32 result on those inputs; outputs come back in x's dtype."""
    from peerlab.mixers.peer_triton import experts_triton

    g = torch.Generator().manual_seed(1)
    tokens, hk, n = 12, 8, 64
    x = torch.randn(tokens, D, generator=g).to(torch.bfloat16)
    indices = torch.randint(0, n, (tokens, hk), generator=g)
    weights = torch.rand(tokens, hk, generator=g).softmax(-1)
    down, up = (torch.randn(n, D, generator=g) * 0.1 for _ in range(2))
    y = experts_triton(x, indices, weights, down, up, "gelu")
    ref = experts_triton(x.float(), indices, weights, down, up, "gelu")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("layer", [["layer=peer_small", "layer.n_experts=1024", "layer.d_key=16"],
                                   ["layer=pkm_small", "layer.n_memories=1024", "layer.d_key=16"]], ids=["peer", "pkm"])
def test_bf16_mixed_training_follows_fp32(tmp_path, compose, layer):
    """Lightning ``precision=bf16-mixed`` end to end (LazyAdamW with sparse rows, sparse-aware clipping): the
    attention and dense FFWs run in bf16, so losses differ from fp32 by bf16 rounding, not more."""
    from peerlab.train import run

    common = [*layer, "budget=2e10", f"out_dir={tmp_path}", "logger=csv"]
    runs = {precision: run(compose(*common, f"trainer.precision={precision}", f"run_name={precision}"))
            for precision in ("32-true", "bf16-mixed")}
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    assert fp32["steps"] == bf16["steps"] >= 80
    # measured: 0.0021 nats (PEER) and 0.0001 (PKM) after 96 steps
    assert abs(fp32["final_val_loss"] - bf16["final_val_loss"]) < 0.01, (fp32["final_val_loss"], bf16["final_val_loss"])
    from peerlab.checkpointing import load_checkpoint_dict

    ckpt = load_checkpoint_dict(bf16["checkpoints"]["last"])
    tables = [v for k, v in ckpt["state_dict"].items() if k.endswith(("down.weight", "up.weight", "values"))]
    assert tables and all(t.dtype == torch.float32 for t in tables)
    states = [t for s in ckpt["optimizer_states"][0]["state"].values() for t in s.values() if t.dim() == 2]
    assert states and all(t.dtype == torch.float32 for t in states)
