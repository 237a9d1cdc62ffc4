"""Validation loss per corpus source at the seeded points of a sweep: where does one layer's advantage come from?

A sweep point run with several seeds (a method's optimum) has its final checkpoints scored on the validation
documents of each source of its corpus (``eval.py``'s ``embedded:<source>`` sets), and each method's best seeded
point is set against dense's (``ffw``) at the same budget, source by source, in seed standard deviations of the
difference. A gap that sits in one source only (say, a repetitive one) is not a gap in language modelling at large.

    python -m peerlab.analysis.per_source runs/sweeps/isoflop_cpu_matched \\
        --out experiments/results/isoflop_cpu_matched/per_source.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict

from peerlab.analysis.collect import Run, check_same_data, collect
from peerlab.analysis.scaling import z_score
from peerlab.config import sci

Point = tuple[float, str, float]  # budget, method, size


def seeded_points(runs: list[Run], min_seeds: int) -> dict[Point, list[Run]]:
    points: dict[Point, list[Run]] = defaultdict(list)
    for r in runs:
        points[(r.budget, r.method, r.params)].append(r)
    return {p: rs for p, rs in sorted(points.items()) if len({r.seed for r in rs}) >= min_seeds}


def source_losses(run: Run, batch_size: int = 16) -> dict[str, float]:
    """Loss on each source's validation documents, from the run's final checkpoint (as ``eval.py`` scores it)."""
    from peerlab.evaluate import load_checkpoint, perplexity, set_documents, token_stream

    module, tok = load_checkpoint(run.path / "checkpoints" / "last.ckpt")
    sources = run.config_value("data.sources") or []
    return {s: perplexity(module, token_stream(tok, set_documents(f"embedded:{s}", {}, module, None, None)),
                          batch_size)["loss"] for s in sources}


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def table(losses: dict[Point, list[dict[str, float]]], base: str = "ffw") -> str:
    sources = sorted({s for per_seed in losses.values() for row in per_seed for s in row})
    stats = {p: {s: _mean_sd([row[s] for row in per_seed]) for s in sources} for p, per_seed in losses.items()}
    overall = {p: statistics.fmean(m for m, _ in stats[p].values()) for p in stats}
    best_base = {}
    for (budget, method, size) in stats:
        if method == base and (budget not in best_base or overall[(budget, method, size)] < overall[best_base[budget]]):
            best_base[budget] = (budget, method, size)
    lines = ["| budget | method | size (dense-backbone params) | seeds | " + " | ".join(f"{s}: loss (seed std) | {s}: - {base}" for s in sources) + " |",
             "|---|---|---|---|" + "---|---|" * len(sources)]
    for p in stats:
        budget, method, size = p
        cells = [sci(budget), method, f"{size / 1e6:.3g}M", str(len(losses[p]))]
        for s in sources:
            mean, sd = stats[p][s]
            cells.append(f"{mean:.4f}" + ("" if sd is None else f" ({sd:.4f})"))
            ref = best_base.get(budget)
            if ref is None or method == base:
                cells.append("-")
                continue
            ref_mean, ref_sd = stats[ref][s]
            diff = mean - ref_mean
            z = z_score(diff, sd, ref_sd)
            cells.append(f"{diff:+.4f}" + ("" if z is None else f" ({z:+.1f} sd)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, output_file

    ap = ArgumentParser(prog="python -m peerlab.analysis.per_source", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="folders searched (recursively) for results.json")
    ap.add_argument("--out", required=True, type=output_file, help="the markdown table written")
    ap.add_argument("--min-seeds", type=int, default=3, help="sweep points with at least this many seeds are scored")
    args = ap.parse_args(argv)
    if args.min_seeds < 1:
        ap.error(f"--min-seeds={args.min_seeds}: must be >= 1")
    runs, _ = collect(args.dirs)
    problem = check_same_data(runs)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    points = seeded_points(runs, args.min_seeds)
    if not points:
        print(f"error: no sweep point under {', '.join(args.dirs)} has {args.min_seeds} seeds", file=sys.stderr)
        return 2
    losses: dict[Point, list[dict[str, float]]] = {}
    done, total = 0, sum(len(rs) for rs in points.values())
    for p, rs in points.items():
        losses[p] = []
        for r in rs:
            losses[p].append(source_losses(r))
            done += 1
            print(f"[{done}/{total}] {sci(p[0])} {p[1]} seed {r.seed}: "
                  + ", ".join(f"{s} {v:.4f}" for s, v in losses[p][-1].items()), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "Validation loss (nats) per corpus source at each sweep point with seeds, from the final checkpoints; "
        "the difference to the best seeded dense point of the same budget, in seed standard deviations of the difference.\n\n"
        + table(losses) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
