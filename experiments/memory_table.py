"""The paper grid's peak memory and traffic per GPU under the ways of running it, from the planner's models
(``peerlab.parallel.memory``, ``peerlab.parallel.traffic``): docs/scale-out.md's tables (python -m peerlab.doc_tables), and the 16-million-expert rows.

    python experiments/memory_table.py > experiments/results/memory/isoflop_paper.md

Columns, all 8 GPUs, bf16-mixed, the chunked loss, 128 x 2048 tokens per step (micro-batch x accumulation):
- FSDP, 1 x 16, tables whole on every GPU (``isoflop_paper.yaml`` before memory parallelism);
- FSDP, 4 x 4, tables whole (``isoflop_paper_80gb.yaml`` before);
- FSDP, 4 x 4, ``trainer.memory_parallel=auto`` (the micro-batch ``isoflop_paper_80gb.yaml`` had for 40 GB GPUs);
- FSDP, 8 x 2, ``trainer.memory_parallel=auto`` (and for 80 GB GPUs).
Each cell: peak GiB per GPU / GB each GPU sends per step (M: the memory-parallel size ``auto`` takes). Bold where the
point fits 40 GiB with 10% headroom, plain where it fits only 80 GiB, struck out where it fits neither (peak plus the
CUDA context and NCCL's buffers, ``peerlab.parallel.cuda_overhead``, under 90%). Memory and traffic do not depend on
the budget, so each (model, layer) is one row. Then ``isoflop_paper.yaml`` as it runs (``data.batch_size=auto``): the
micro-batch each point takes on a 40 GB A100 and an 80 GB H100, with the estimated step time and GPU-hours.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from peerlab.builders import build_model
from peerlab.parallel import cuda_overhead
from peerlab.parallel.memory import Execution
from peerlab.parallel.memory_parallel import choose
from peerlab.parallel.plan import GB, GIB, HEADROOM, estimate
from peerlab.parallel.traffic import comm_bytes
from peerlab.sizes import load_layer

ROOT = Path(__file__).resolve().parents[1]
FSDP = Execution(device_type="cuda", precision="bf16-mixed", strategy="fsdp", world=8, seq_len=2048,
                 loss_chunk_tokens=8192)
AUTO = "auto"
COLUMNS = {  # (execution, memory_parallel)
    "FSDP 1 x 16, M = 1": (replace(FSDP, micro_batch=1, accumulate=16), 1),
    "FSDP 4 x 4, M = 1": (replace(FSDP, micro_batch=4, accumulate=4), 1),
    "FSDP 4 x 4, M auto": (replace(FSDP, micro_batch=4, accumulate=4), AUTO),
    "FSDP 8 x 2, M auto": (replace(FSDP, micro_batch=8, accumulate=2), AUTO),
}


def model(name: str, layer: str, **layer_overrides):
    from omegaconf import OmegaConf

    cfg = load_layer(layer)
    cfg.update(layer_overrides)
    with torch.device("meta"):
        return build_model(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"), cfg, 50257, 2048)


def needs(net, ex: Execution) -> float:
    """GiB the fit test compares: the peak and what lies outside PyTorch's allocator."""
    return (estimate(net, ex).peak + cuda_overhead.total(ex)) / GIB


def cell(net, ex: Execution, m) -> tuple[str, float]:
    ex = replace(ex, memory_parallel=choose(net, ex) if m == AUTO else m)
    gib, need = estimate(net, ex).peak / GIB, needs(net, ex)
    text = f"{gib:.1f} / {sum(comm_bytes(net, ex).values()) / GB:.1f}" + (f" (M {ex.memory_parallel})"
                                                                           if ex.memory_parallel > 1 else "")
    if need <= HEADROOM * 40:
        return f"**{text}**", need
    return (text if need <= HEADROOM * 80 else f"~~{text}~~"), need


def main() -> None:
    lines = ["| point | parameters | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    counts = dict.fromkeys(COLUMNS, 0)
    for name in ("d12", "d16", "d20", "d24"):
        for layer in ("ffw", "moe", "pkm", "peer"):
            net = model(name, layer)
            cells = []
            for column, (ex, m) in COLUMNS.items():
                text, gib = cell(net, ex, m)
                counts[column] += gib <= HEADROOM * 40
                cells.append(text)
            lines.append(f"| {name}/{layer} | {net.num_params() / 1e9:.2f}B | " + " | ".join(cells) + " |")
    lines.append("| points that fit 40 GiB | | " + " | ".join(f"{counts[c]} of 16" for c in COLUMNS) + " |")
    print("Peak GiB per GPU / GB sent per GPU per step, by the planner (`python experiments/memory_table.py`); "
          "**bold**: fits 40 GiB with 10% headroom, plain: fits 80 GiB only, ~~struck~~: fits neither.\n")
    print("\n".join(lines))

    print("\n16 million experts: PEER with N = 4096^2 (h = 8, k = 16), 8 GPUs, bf16-mixed; each memory-parallel size "
          "at the micro-batch given (peak GiB / GB per step):\n")
    sizes = [1, 2, 4, 8]
    head = ("| point | parameters | micro x acc | " + " | ".join(f"M = {m}" for m in sizes)
            + " | fits 8 x 40 GB | fits 8 x 80 GB | 16 GPUs, M = 16 |")
    lines = [head, "|---|---|---|" + "---|" * (len(sizes) + 3)]
    for name in ("d12", "d24"):
        net = model(name, "peer", n_experts=4096**2)
        for micro, acc in ((1, 16), (4, 4)):
            ex = replace(FSDP, micro_batch=micro, accumulate=acc)
            peaks = {m: estimate(net, replace(ex, memory_parallel=m)).peak / GIB for m in sizes}
            need = {m: needs(net, replace(ex, memory_parallel=m)) for m in sizes}
            traffic = {m: sum(comm_bytes(net, replace(ex, memory_parallel=m)).values()) / GB for m in sizes}

            def fits(device_gib: float, need=need, traffic=traffic) -> str:
                ok = [m for m in sizes if need[m] <= HEADROOM * device_gib]
                return f"M = {min(ok, key=lambda m: (traffic[m], m))}" if ok else "no"

            cells = [f"{peaks[m]:.1f} / {traffic[m]:.1f}" for m in sizes]
            wide = replace(ex, world=16, accumulate=acc // 2, memory_parallel=16)  # the same 128 sequences a step
            cells.append(f"{estimate(net, wide).peak / GIB:.1f} / {sum(comm_bytes(net, wide).values()) / GB:.1f}")
            lines.append(f"| {name}/peer N=4096^2 | {net.num_params() / 1e9:.2f}B | {micro} x {acc} | "
                         + " | ".join(cells[:-1]) + f" | {fits(40)} | {fits(80)} | {cells[-1]} |")
    print("\n".join(lines))
    print()
    print(chosen_micro_batches())


CARDS = (("a100-40", "40 GB A100"), ("h100", "80 GB H100"))


def chosen_micro_batches() -> str:
    """``isoflop_paper.yaml`` as it runs: per point the micro-batch ``data.batch_size=auto`` takes on each card, the
    step time and the GPU-hours of both budgets, by ``python -m peerlab.plan ... --gpu``."""
    from peerlab.parallel.plan import plan_point
    from peerlab.parallel.step_time import GPUS
    from peerlab.sweeps.expand import compose_point

    head = "| point | " + " | ".join(f"{label}: micro x acc, peak GiB, step s, GPU-h 6e18 / 2e19" for _, label in CARDS) + " |"
    lines = [head, "|---|" + "---|" * len(CARDS)]
    totals = {card: [0.0, 0.0] for card, _ in CARDS}
    for name in ("d12", "d16", "d20", "d24"):
        for layer in ("ffw", "moe", "pkm", "peer"):
            cells = []
            for card, _ in CARDS:
                gpu = GPUS[card]
                rows = [plan_point(compose_point(ROOT / "experiments", "isoflop_paper", o), o, gpu.memory_gib, "cuda",
                                   gpu=gpu) for o in ([f"model={name}", f"layer={layer}", f"budget={b}"]
                                                      for b in ("6e18", "2e19"))]
                r = rows[0]
                for i, x in enumerate(rows):
                    totals[card][i] += sum(x["gpu_hours"]) / 2
                cells.append(f"{r['micro_batch']} x {r['accumulate']}, {r['estimate_gb']:.1f}, "
                             f"{r['step_s'][0]:.2f}-{r['step_s'][1]:.2f}, "
                             + " / ".join(f"{sum(x['gpu_hours']) / 2:,.0f}" for x in rows))
            lines.append(f"| {name}/{layer} | " + " | ".join(cells) + " |")
    lines.append("| all 32 points | " + " | ".join(
        f"GPU-hours {totals[card][0]:,.0f} (6e18) + {totals[card][1]:,.0f} (2e19)" for card, _ in CARDS) + " |")
    return ("`isoflop_paper.yaml` as it runs (`data.batch_size=auto`, `trainer.memory_parallel=auto`): the micro-batch "
            "each point takes, its planned peak, the estimated step time (communication hidden, or not at all) and "
            "GPU-hours (the middle of that range) on each card, `python -m peerlab.plan -cd experiments -cn "
            "isoflop_paper --gpu a100-40` and `--gpu h100` (estimates until `benchmarks/gpu_scale.py` measures a card):"
            "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
