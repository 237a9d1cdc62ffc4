"""The paper grid's peak memory per GPU under the ways of running it, from the planner's memory model
(``peerlab.memory``): the README's table.

    python experiments/memory_table.py > experiments/results/memory/isoflop_paper.md

Columns, all 8 GPUs, bf16-mixed, 128 x 2048 tokens per step:
- DDP as shipped before issue 29: 16 sequences per GPU, the whole LM loss at once, DDP's buckets beside the gradients;
- DDP now: the same micro-batch with the chunked loss (8192 tokens) and gradients in DDP's buckets;
- DDP now, micro-batch 1 x 16 accumulated;
- FSDP, micro-batch 1 x 16 (``isoflop_paper.yaml``, for 40 GB GPUs);
- FSDP, micro-batch 4 x 4 (``isoflop_paper_80gb.yaml``).
A cell is bold where the point fits 40 GiB with 10% headroom, plain where it fits only 80 GiB, struck out where it
fits neither. Memory does not depend on the budget, so each (model, layer) is one row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from peerlab.builders import build_model
from peerlab.memory import Execution
from peerlab.plan import GIB, HEADROOM, estimate
from peerlab.sizes import load_layer

ROOT = Path(__file__).resolve().parents[1]
BASE = Execution(device_type="cuda", precision="bf16-mixed", strategy="ddp", world=8, micro_batch=16, seq_len=2048)
COLUMNS = {
    "DDP before (16 x 1)": replace(BASE, loss_chunk_tokens=0, ddp_bucket_view=False),
    "DDP now (16 x 1)": replace(BASE, loss_chunk_tokens=8192),
    "DDP now (1 x 16)": replace(BASE, loss_chunk_tokens=8192, micro_batch=1, accumulate=16),
    "FSDP (1 x 16): isoflop_paper": replace(BASE, strategy="fsdp", loss_chunk_tokens=8192, micro_batch=1, accumulate=16),
    "FSDP (4 x 4): isoflop_paper_80gb": replace(BASE, strategy="fsdp", loss_chunk_tokens=8192, micro_batch=4, accumulate=4),
}


def cell(peak: int) -> str:
    gib = peak / GIB
    if gib <= HEADROOM * 40:
        return f"**{gib:.1f}**"
    return f"{gib:.1f}" if gib <= HEADROOM * 80 else f"~~{gib:.1f}~~"


def main() -> None:
    from omegaconf import OmegaConf

    lines = ["| point | parameters | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    counts = dict.fromkeys(COLUMNS, 0)
    for model in ("d12", "d16", "d20", "d24"):
        model_cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{model}.yaml")
        for layer in ("ffw", "moe", "pkm", "peer"):
            cells = []
            for name, ex in COLUMNS.items():
                with torch.device("meta"):
                    net = build_model(model_cfg, load_layer(layer), 50257, ex.seq_len)
                peak = estimate(net, ex).peak
                counts[name] += peak <= HEADROOM * 40 * GIB
                cells.append(cell(peak))
            lines.append(f"| {model}/{layer} | {net.num_params() / 1e9:.2f}B | " + " | ".join(cells) + " |")
    lines.append("| points that fit 40 GiB | | " + " | ".join(f"{counts[c]} of 16" for c in COLUMNS) + " |")
    print("Peak GiB per GPU by the planner (`python experiments/memory_table.py`); **bold**: fits 40 GiB with 10% "
          "headroom, plain: fits 80 GiB only, ~~struck~~: fits neither.\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
