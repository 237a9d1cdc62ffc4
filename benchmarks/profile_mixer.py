"""Where a study layer's time goes: forward + backward of the sparse block's mixer alone, at the study's batch
(16 x 128 tokens, one thread), against the FFW it replaces, and torch's profiler table of its most expensive ops.

    python -m benchmarks.profile_mixer s3 memory_plus            # also: pkm_matched, peer_matched, moe_fine, ...
    python -m benchmarks.profile_mixer s3 memory_plus --rows 10 --steps 20

The study cases of ``benchmarks.run`` time whole training steps; this says which ops of a layer make up its share
(e.g. why Memory+ and PKM train at ~0.75x of dense at s3, docs/development.md, "Benchmarks").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.cases import STUDY_BATCH, STUDY_LAYERS, STUDY_MODELS, STUDY_SEQ, layer_step, study_model


def mixer_step(model_name: str, layer_name: str):
    """The sparse block's mixer and one forward + backward of it on fixed inputs."""
    model = study_model(model_name, layer_name).train()
    block = model.sparse_blocks[0] if model.sparse_blocks else (len(model.blocks) - 1) // 2  # "middle"
    mixer = model.blocks[block].mixer
    return mixer, layer_step(mixer, STUDY_BATCH, STUDY_SEQ, model.shape.d_model, torch.Generator().manual_seed(0))


def median_ms(step, steps: int) -> float:
    step()  # untimed: first-call allocations
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=STUDY_MODELS)
    ap.add_argument("layer", choices=[name for name in STUDY_LAYERS if name != "ffw"])
    ap.add_argument("--steps", type=int, default=20, help="timed forward+backward passes per layer")
    ap.add_argument("--rows", type=int, default=15, help="ops in the profiler table")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the study runs two one-thread processes on two cores
    steps = {name: mixer_step(args.model, name)[1] for name in ("ffw", args.layer)}
    # Interleaved rounds, so that machine noise hits both layers alike.
    times = {name: [] for name in steps}
    for _ in range(3):
        for name, step in steps.items():
            times[name].append(median_ms(step, args.steps))
    ffw, layer = (statistics.median(times[n]) for n in ("ffw", args.layer))
    print(f"{args.model}, {STUDY_BATCH}x{STUDY_SEQ} tokens, 1 thread: forward+backward ffw {ffw:.2f} ms, "
          f"{args.layer} {layer:.2f} ms ({layer / ffw:.2f}x)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            steps[args.layer]()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"{args.layer}: the ops with the most self CPU time over {args.steps} passes "
          f"(profiler total {total / 1e3 / args.steps:.2f} ms per pass)")
    print(table)


if __name__ == "__main__":
    main()
