"""Redraw an analysis folder's isoFLOP figure from the tables it committed, without the runs:
``python -m peerlab.analysis.redraw experiments/results/isoflop_cpu_matched``.

``optima.json`` holds every fitted optimum (sizes, mean losses, parabola) and ``runs.md`` every run's final loss, so
``isoflop.png`` comes back exactly as ``python -m peerlab.analysis`` draws it today. ``loss_vs_flops.png`` needs each
run's metrics.csv, which only the run folders hold: it is left as it is.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from peerlab.analysis.collect import Run
from peerlab.analysis.figures import isoflop_curves
from peerlab.analysis.isoflop import Optimum


def read(folder: Path) -> tuple[list[Run], list[Optimum]]:
    opts = [Optimum(**{**o, "coef": tuple(o["coef"]) if o["coef"] else None})
            for o in json.loads((folder / "optima.json").read_text())]
    sizes = {(o.budget, o.method): o.sizes for o in opts}
    runs = []
    for line in (folder / "runs.md").read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 9:
            continue
        budget, method, size, seed, loss = float(cells[0]), cells[1], float(cells[2].rstrip("M")) * 1e6, int(cells[3]), float(cells[8])
        exact = min(sizes.get((budget, method), [size]), key=lambda s: abs(math.log(s / size)))  # runs.md rounds sizes
        runs.append(Run(folder, method, budget, exact, loss, seed, {}))
    return runs, opts


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, fail

    ap = ArgumentParser(prog="python -m peerlab.analysis.redraw", description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="analysis output folders (optima.json and runs.md)")
    args = ap.parse_args(argv)
    for folder in args.folders:
        if not ((folder / "optima.json").is_file() and (folder / "runs.md").is_file()):
            fail(f"{folder}: no optima.json and runs.md here (an output folder of python -m peerlab.analysis)")
        runs, opts = read(folder)
        isoflop_curves(runs, opts, folder / "isoflop.png")
        print(f"{folder / 'isoflop.png'}: {len(runs)} runs, {len(opts)} optima")
    return 0


if __name__ == "__main__":
    sys.exit(main())
