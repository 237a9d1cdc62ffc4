"""The memory model's error against what this CPU measures, per mixer: the numbers behind tests/test_memory.py's
bounds (saved activations within 10%, a training step's peak within 25%), as a table.

    python experiments/memory_accuracy.py > experiments/results/memory/accuracy.md

Each cell is planned / measured - 1, in percent: saved activations against torch's saved-tensor hooks (a forward
pass of 8 x 64 tokens), and the peak of a real training step (forward, backward, clipping, LazyAdamW) against the
profiler's allocation trace, in each of the test's settings. The models are peerlab.memory_probe's: 3 blocks of
width 96, the mixer in the middle block, vocabulary 512.
"""

from __future__ import annotations

import torch

from peerlab.memory import Execution, estimate
from peerlab.memory_probe import (
    PROBE_LAYERS,
    PROBE_SETTINGS,
    PROBE_VOCAB,
    probe_model,
    saved_bytes,
    step_peak,
)

BATCH, SEQ = 8, 64


def saved_error(layer: str, precision: str) -> float:
    model = probe_model(layer, seq_len=SEQ)
    x = torch.randint(0, PROBE_VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def forward():
        with autocast:
            model.loss(x, x)

    measured = saved_bytes(forward, list(model.parameters()))
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=BATCH,
                                    seq_len=SEQ, loss_chunk_tokens=0))
    return est.activations / measured - 1


def peak_error(layer: str, setting: tuple) -> float:
    precision, accumulate, chunk, checkpointing = setting
    model = probe_model(layer, seq_len=SEQ)
    model.loss_chunk_tokens = chunk
    model.set_activation_checkpointing(checkpointing)
    measured, _, _ = step_peak(model, BATCH, SEQ, precision, accumulate)
    est = estimate(model, Execution(device_type="cpu", precision=precision, strategy="single", micro_batch=BATCH,
                                    seq_len=SEQ, accumulate=accumulate, loss_chunk_tokens=chunk,
                                    activation_checkpointing=checkpointing))
    return est.peak / measured - 1


def main() -> None:
    torch.set_num_threads(1)
    heads = ["saved fp32", "saved bf16", *(f"peak {name}" for name in PROBE_SETTINGS)]
    print("Planned / measured - 1, in percent (`python experiments/memory_accuracy.py`; method in its docstring).\n")
    print("| mixer | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    worst = [0.0] * len(heads)
    for layer in sorted(PROBE_LAYERS):
        errors = [saved_error(layer, "32-true"), saved_error(layer, "bf16-mixed"),
                  *(peak_error(layer, s) for s in PROBE_SETTINGS.values())]
        worst = [max(w, abs(e)) for w, e in zip(worst, errors, strict=True)]
        print(f"| {layer} | " + " | ".join(f"{100 * e:+.1f}" for e in errors) + " |", flush=True)
    print("| largest |error| | " + " | ".join(f"{100 * w:.1f}" for w in worst) + " |")


if __name__ == "__main__":
    main()
