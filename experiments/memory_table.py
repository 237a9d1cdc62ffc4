"""The paper grid's peak memory and traffic per GPU under the ways of running it, from the planner's models
(``peerlab.parallel.memory``, ``peerlab.parallel.traffic``): the README's table, and the 16-million-expert rows.

    python experiments/memory_table.py > experiments/results/memory/isoflop_paper.md

Columns, all 8 GPUs, bf16-mixed, the chunked loss, 128 x 2048 tokens per step (micro-batch x accumulation):
- FSDP, 1 x 16, tables whole on every GPU (``isoflop_paper.yaml`` before memory parallelism);
- FSDP, 4 x 4, tables whole (``isoflop_paper_80gb.yaml`` before);
- FSDP, 4 x 4, ``trainer.memory_parallel=auto`` (``isoflop_paper.yaml`` now, for 40 GB GPUs);
- FSDP, 8 x 2, ``trainer.memory_parallel=auto`` (``isoflop_paper_80gb.yaml`` now).
Each cell: peak GiB per GPU / GB each GPU sends per step (M: the memory-parallel size ``auto`` takes). Bold where the
point fits 40 GiB with 10% headroom, plain where it fits only 80 GiB, struck out where it fits neither. Memory and
traffic do not depend on the budget, so each (model, layer) is one row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from peerlab.builders import build_model
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
    "FSDP 4 x 4, M auto: isoflop_paper": (replace(FSDP, micro_batch=4, accumulate=4), AUTO),
    "FSDP 8 x 2, M auto: isoflop_paper_80gb": (replace(FSDP, micro_batch=8, accumulate=2), AUTO),
}


def model(name: str, layer: str, **layer_overrides):
    from omegaconf import OmegaConf

    cfg = load_layer(layer)
    cfg.update(layer_overrides)
    with torch.device("meta"):
        return build_model(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"), cfg, 50257, 2048)


def cell(net, ex: Execution, m) -> tuple[str, float]:
    ex = replace(ex, memory_parallel=choose(net, ex) if m == AUTO else m)
    gib = estimate(net, ex).peak / GIB
    text = f"{gib:.1f} / {sum(comm_bytes(net, ex).values()) / GB:.1f}" + (f" (M {ex.memory_parallel})"
                                                                           if ex.memory_parallel > 1 else "")
    if gib <= HEADROOM * 40:
        return f"**{text}**", gib
    return (text if gib <= HEADROOM * 80 else f"~~{text}~~"), gib


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
            traffic = {m: sum(comm_bytes(net, replace(ex, memory_parallel=m)).values()) / GB for m in sizes}

            def fits(device_gib: float, peaks=peaks, traffic=traffic) -> str:
                ok = [m for m in sizes if peaks[m] <= HEADROOM * device_gib]
                return f"M = {min(ok, key=lambda m: (traffic[m], m))}" if ok else "no"

            cells = [f"{peaks[m]:.1f} / {traffic[m]:.1f}" for m in sizes]
            wide = replace(ex, world=16, accumulate=acc // 2, memory_parallel=16)  # the same 128 sequences a step
            cells.append(f"{estimate(net, wide).peak / GIB:.1f} / {sum(comm_bytes(net, wide).values()) / GB:.1f}")
            lines.append(f"| {name}/peer N=4096^2 | {net.num_params() / 1e9:.2f}B | {micro} x {acc} | "
                         + " | ".join(cells[:-1]) + f" | {fits(40)} | {fits(80)} | {cells[-1]} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
