"""The memory model (``peerlab.memory``) against what this CPU measures, for every mixer at small sizes:
parameter and optimizer bytes exactly, saved activations against torch's saved-tensor hooks (10%), and the peak of
a real training step against the profiler's allocation trace (25%)."""

from __future__ import annotations

import pytest
import torch

from peerlab.memory import Execution, estimate
from peerlab.memory_probe import (
    PROBE_LAYERS,
    PROBE_SETTINGS,
    PROBE_VOCAB,
    held_bytes,
    probe_model,
    saved_bytes,
    step_peak,
)

LAYERS = PROBE_LAYERS
VOCAB = PROBE_VOCAB
model_for = probe_model


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_parameter_and_optimizer_bytes_are_exact(layer):
    model = model_for(layer)
    _, before, opt = step_peak(model, batch=2, seq_len=16)
    est = estimate(model, Execution(device_type="cpu", precision="32-true", strategy="single", micro_batch=2, seq_len=16))
    assert est.params == sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    assert est.optimizer == state
    scratch = sum(t.nbytes for pair in opt._buffers.values() for t in pair)  # LazyAdamW's rows, sparse tables only
    assert held_bytes(model, opt) - est.params - est.optimizer - scratch == sum(b.nbytes for b in model.buffers())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_saved_activations_match_the_saved_tensor_hooks(layer, precision):
    batch, seq = 8, 64
    model = model_for(layer, seq_len=seq)
    x = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def forward():
        with autocast:
            model.loss(x, x)

    measured = saved_bytes(forward, list(model.parameters()))
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=batch,
                                    seq_len=seq, loss_chunk_tokens=0))
    assert est.activations == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize("setting", list(PROBE_SETTINGS.values()), ids=list(PROBE_SETTINGS))
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_peak_of_a_training_step_matches_the_profiler(layer, setting):
    precision, accumulate, chunk, checkpointing = setting
    batch, seq = 8, 64
    model = model_for(layer, seq_len=seq)
    model.loss_chunk_tokens = chunk
    model.set_activation_checkpointing(checkpointing)
    measured, _, _ = step_peak(model, batch, seq, precision, accumulate)
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=batch,
                                    seq_len=seq, accumulate=accumulate, loss_chunk_tokens=chunk,
                                    activation_checkpointing=checkpointing))
    assert est.peak == pytest.approx(measured, rel=0.25), est


def test_peer_with_sparse_table_gradients_counts_the_rows_a_step_uses():
    model = model_for("peer", {"sparse_grads": True, "n_experts": 128**2})
    batch, seq = 4, 32
    measured, _, _ = step_peak(model, batch, seq)
    ex = Execution(device_type="cpu", precision="32-true", strategy="single", micro_batch=batch, seq_len=seq)
    sparse = estimate(model, ex)
    dense = estimate(model_for("peer", {"sparse_grads": False, "n_experts": 128**2}), ex)
    assert sparse.peak == pytest.approx(measured, rel=0.25)
    assert sparse.grads < dense.grads  # a step of 128 tokens x 128 retrievals uses about 63% of the 16384 rows


def test_fsdp_shards_states_and_adds_gathered_units():
    model = model_for("peer")
    single = estimate(model, Execution(device_type="cuda", precision="bf16-mixed", strategy="ddp", world=8))
    sharded = estimate(model, Execution(device_type="cuda", precision="bf16-mixed", strategy="fsdp", world=8))
    assert sharded.params == pytest.approx(single.params / 8, rel=0.01)
    assert sharded.optimizer < single.optimizer / 7
    assert sharded.peak < single.peak
