"""What this CPU measures of a training step's memory, to hold ``peerlab.parallel.memory``'s model against.

- :func:`saved_bytes`: the bytes autograd saves for backward during a forward pass, through torch's saved-tensor
  hooks, each storage counted once and parameters left out.
- :func:`step_peak`: the peak bytes of one real training step (forward, backward, clipping, LazyAdamW), from the
  profiler's allocation trace, on top of what is allocated before it (weights, optimizer state, buffers).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from peerlab.optim import LazyAdamW, clip_grad_norm

# Every mixer, at a size where its own activations are a fair share of a step's: what tests/test_memory.py and
# experiments/memory_accuracy.py hold the memory model against.
PROBE_LAYERS = {
    "ffw": {}, "moe": {"n_experts": 8}, "moe_tc": {"n_experts": 8}, "moe_fine": {}, "pkm": {"n_memories": 32**2, "d_key": 16},
    "peer": {"n_experts": 32**2, "d_key": 16}, "memory_plus": {}, "peer_linear": {},
}
PROBE_WIDTH, PROBE_DEPTH, PROBE_VOCAB = 96, 3, 512
# (precision, micro-batches accumulated, chunked loss tokens, activation checkpointing) of the measured steps
PROBE_SETTINGS = {"fp32": ("32-true", 1, 0, False), "bf16": ("bf16-mixed", 1, 0, False),
                  "accumulate": ("32-true", 2, 0, False), "chunked-loss": ("32-true", 1, 256, False),
                  "bf16-ckpt-chunked": ("bf16-mixed", 1, 256, True), "accumulate-ckpt": ("32-true", 2, 0, True)}


def probe_model(layer: str, overrides: dict | None = None, seq_len: int = 64):
    """A 3-block, width-96 model with ``layer`` in its middle block, in training mode, seeded."""
    from peerlab.builders import build_model
    from peerlab.sizes import load_layer

    layer_cfg = load_layer(layer)
    layer_cfg.update({**PROBE_LAYERS[layer], **(overrides or {})})
    cfg = {"name": "probe", "depth": PROBE_DEPTH, "aspect_ratio": 32, "head_dim": 16, "d_model": PROBE_WIDTH,
           "ffw_mult": 4.0, "activation": "gelu", "sparse_blocks": "middle"}
    torch.manual_seed(0)
    model = build_model(cfg, layer_cfg, PROBE_VOCAB, seq_len).train()
    for mixer in model.mixers:
        mixer.prepare_for_backend()
    return model


def saved_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages ``fn()`` saves for backward, not counting those of ``exclude``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def allocation_peak(fn) -> int:
    """The most bytes allocated at once while ``fn()`` runs, beyond what was allocated when it started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights, buffers, gradients and optimizer state (each storage once), LazyAdamW's reused row
    buffers included."""
    scratch = [t for pair in getattr(optimizer, "_buffers", {}).values() for t in pair]
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)),
               *scratch]
    seen = {}
    for t in tensors:
        if t.is_sparse:
            seen[id(t)] = t._values().nbytes + t._indices().nbytes
        else:
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


def optimizer(model: torch.nn.Module) -> LazyAdamW:
    return LazyAdamW(list(model.parameters()), lr=1e-3, weight_decay=0.1)


def step_peak(model, batch: int, seq_len: int, precision: str = "32-true", accumulate: int = 1,
              seed: int = 0) -> tuple[int, int, LazyAdamW]:
    """``(peak bytes of one training step, bytes held before it, optimizer)``: one step to create the optimizer's
    state, then a second one measured, as Lightning runs them (zero_grad with set_to_none after each)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.shape.vocab_size
    opt = optimizer(model)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-mixed" else nullcontext

    def step() -> None:
        for _ in range(accumulate):
            x = torch.randint(0, vocab, (batch, seq_len), generator=gen)
            y = torch.randint(0, vocab, (batch, seq_len), generator=gen)
            with autocast():
                loss = model.loss(x, y)
            loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    before = held_bytes(model, opt)
    return before + allocation_peak(step), before, opt


def saved_activations(layer: str, precision: str, batch: int = 8, seq_len: int = 64) -> tuple[int, int]:
    """``(planned, measured)`` bytes saved for backward by a forward pass of the probe model with ``layer``:
    ``peerlab.parallel.memory``'s estimate against the saved-tensor hooks."""
    from peerlab.parallel.memory import Execution, estimate

    model = probe_model(layer, seq_len=seq_len)
    x = torch.randint(0, PROBE_VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def forward():
        with autocast:
            model.loss(x, x)

    measured = saved_bytes(forward, list(model.parameters()))
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=batch,
                                    seq_len=seq_len, loss_chunk_tokens=0))
    return est.activations, measured


def step_peaks(layer: str, setting: tuple, batch: int = 8, seq_len: int = 64):
    """``(estimate, measured peak)`` of one training step of the probe model with ``layer`` in a
    :data:`PROBE_SETTINGS` setting: ``peerlab.parallel.memory``'s estimate against the profiler's allocation trace."""
    from peerlab.parallel.memory import Execution, estimate

    precision, accumulate, chunk, checkpointing = setting
    model = probe_model(layer, seq_len=seq_len)
    model.loss_chunk_tokens = chunk
    model.set_activation_checkpointing(checkpointing)
    measured, _, _ = step_peak(model, batch, seq_len, precision, accumulate)
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=batch,
                                    seq_len=seq_len, accumulate=accumulate, loss_chunk_tokens=chunk,
                                    activation_checkpointing=checkpointing))
    return est, measured
