"""How closely FSDP (peerlab.parallel.fsdp on Lightning's engine: torch's fully_shard) trains what DDP and one process train,
per mixer: the numbers behind tests/test_fsdp.py's bounds (1e-6 against DDP, 1e-5 against one process), as a table.

    python experiments/fsdp_agreement.py > experiments/results/fsdp/agreement.md

Two gloo ranks on this CPU run tests/fsdp_worker.py: each mixer, at tiny sizes, trained 4 steps from the same
weights on the same batches under FSDP and under DDP (each rank on its half of every batch), and by rank 0 alone on
the whole batches. Where a rank computes from its own half (query BatchNorm in PKM and PEER, MoE's routing within a
batch) FSDP is held against DDP only; elsewhere (LayerNorm queries included) against one process too. Each cell is the largest |difference| of a step's loss.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

WORKER = Path(__file__).resolve().parents[1] / "tests" / "fsdp_worker.py"
# What a rank computes from its own half of a batch, so that 2 ranks are not one process on the whole batch.
PER_RANK = {"pkm": "query BatchNorm", "peer": "query BatchNorm", "moe": "routes within its batch",
            "moe_fine": "routes within its batch"}


def run_ranks(folder: Path, world: int = 2) -> dict:
    outs = [folder / f"rank{r}.pt" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(folder / "store"), str(outs[r])],
                              cwd=WORKER.parent) for r in range(world)]
    codes = [p.wait(timeout=1200) for p in procs]
    if any(codes):
        raise SystemExit(f"error: a rank failed (exit codes {codes})")
    return torch.load(outs[0], weights_only=False)


def largest(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_ranks(Path(tmp))
    print("Largest |loss difference| over 4 steps, 2 gloo ranks (`python experiments/fsdp_agreement.py`; method in its "
          "docstring).\n")
    print("| mixer | FSDP vs DDP | FSDP vs one process | DDP vs one process | per-rank weight + moment bytes / one process's |")
    print("|---|---|---|---|---|")
    for name, entry in result.items():
        per_rank = sum(entry["bytes"]) / sum(entry["single_bytes"])
        why = PER_RANK.get(name)
        versus_one = f"- ({why})" if why else f"{largest(entry['fsdp'], entry['single']):.1e}"
        ddp_one = "-" if why else f"{largest(entry['ddp'], entry['single']):.1e}"
        print(f"| {name} | {largest(entry['fsdp'], entry['ddp']):.1e} | {versus_one} | {ddp_one} | {per_rank:.3f} |")


if __name__ == "__main__":
    main()
