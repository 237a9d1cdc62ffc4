"""Table 1 with PEER's successors (issue 19): the matched study's optima (committed, since its run folders are not
kept) merged with the successors' (``python -m peerlab.analysis`` over their runs), at the budgets both cover.

    python -m peerlab.analysis runs/sweeps/isoflop_cpu_matched --out experiments/results/isoflop_cpu_successors
    python experiments/successors_table.py
writes experiments/results/isoflop_cpu_successors/table1_all.md (Table 1 and every pair of methods).
"""

from __future__ import annotations

import json
from pathlib import Path

from peerlab.analysis import tables
from peerlab.analysis.isoflop import Optimum

RESULTS = Path("experiments/results")
STUDY, SUCCESSORS = RESULTS / "isoflop_cpu_matched", RESULTS / "isoflop_cpu_successors"


def load(folder: Path) -> list[Optimum]:
    return [Optimum(**d) for d in json.loads((folder / "optima.json").read_text())]


def main() -> None:
    new = load(SUCCESSORS)
    budgets = {o.budget for o in new}
    new_methods = {o.method for o in new}
    merged = [o for o in load(STUDY) if o.budget in budgets and o.method not in new_methods] + new
    merged.sort(key=lambda o: (o.budget, o.method))
    text = ("Table 1 at the budgets the successors ran, lr 2e-3 for every layer (the study's): the matched study's "
            "four layers from experiments/results/isoflop_cpu_matched/optima.json, the successors from "
            "experiments/results/isoflop_cpu_successors/optima.json. Made by `python experiments/successors_table.py`.\n\n"
            + tables.table1(merged) + "\n\nEvery pair of methods (seed sd of the difference at the sizes nearest "
            "the optima):\n\n" + tables.pairwise_table(merged) + "\n")
    (SUCCESSORS / "table1_all.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
