"""The memory model's error against what this CPU measures, per mixer: the numbers behind tests/test_memory.py's
bounds (saved activations within 0.5%, a training step's peak within 1.5 times each mixer's largest error here, at
least 8%), as a table.

    python experiments/memory_accuracy.py > experiments/results/memory/accuracy.md

Each cell is planned / measured - 1, in percent: saved activations against torch's saved-tensor hooks (a forward
pass of 8 x 64 tokens), and the peak of a real training step (forward, backward, clipping, LazyAdamW) against the
profiler's allocation trace, in each of the test's settings. The models are peerlab.memory_probe's: 3 blocks of
width 96, the mixer in the middle block, vocabulary 512. Two runs differ by up to about one point (moe_fine with
checkpointed blocks: +6.6/+12.3 in one, +7.4/+11.4 in the next): the allocator's peak depends on when freed blocks
return.
"""

from __future__ import annotations

import torch

from peerlab.memory_probe import PROBE_LAYERS, PROBE_SETTINGS, saved_activations, step_peaks


def saved_error(layer: str, precision: str) -> float:
    planned, measured = saved_activations(layer, precision)
    return planned / measured - 1


def peak_error(layer: str, setting: tuple) -> float:
    est, measured = step_peaks(layer, setting)
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
