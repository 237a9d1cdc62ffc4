"""``python -m peerlab.analysis <sweep dirs> --out <dir>``: isoFLOP fits, figures and tables from results.json files
(``runs.md`` lists every run, with its steps, tokens and FLOPs per token).

    python -m peerlab.analysis runs/sweeps/isoflop_cpu --out experiments/results/isoflop_cpu
    python -m peerlab.analysis runs/sweeps/ablation_query_bn --out experiments/results/bn \\
        --ablation layer.n_experts --series layer.query_norm
    python -m peerlab.analysis runs/sweeps/isoflop_cpu_matched runs/sweeps/repetition_matched \\
        --out experiments/results/repetition_matched --where budget=2e12 --where model.name=s2 \\
        --ablation data.train_fraction --series layer.name --baseline 1.0
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from peerlab.analysis import figures, tables
from peerlab.analysis.collect import check_same_data, collect
from peerlab.analysis.isoflop import optima
from peerlab.analysis.scaling import fit_power_laws, gaps_to


def parse_where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--where {text!r}: expected KEY=VALUE, e.g. budget=2e12 or model.name=s2")
    return key, value


def matches(actual, wanted: str) -> bool:
    try:
        return not isinstance(actual, bool) and float(actual) == float(wanted)
    except (TypeError, ValueError):
        return str(actual) == wanted


# Config keys in which the seeds of one ablation cell may differ: they do not change what is trained.
SEED_KEYS = ("seed", "run_name", "out_dir", "resume", "logger")


def check_ablation(runs, key: str, series: str | None) -> str | None:
    """An error line if ``key`` (or ``series``) is not a plain config value of the runs, or if the runs of one cell
    differ in more than their seed (their spread would be reported as the seeds')."""
    from peerlab.run_folder import differences

    for flag, k in (("--ablation", key), ("--series", series)):
        if k is None:
            continue
        values = [r.config_value(k) for r in runs]
        if all(v is None for v in values):
            return f"{flag} {k}: no run has that config key (e.g. layer.name, model.name, layer.n_experts, budget)"
        if any(isinstance(v, dict | list) for v in values):
            return f"{flag} {k}: a whole config node, not a value; give a key below it (e.g. {k}.name)"
    cells: dict[tuple, list] = {}
    for r in runs:
        cells.setdefault((r.config_value(series) if series else None, r.config_value(key)), []).append(r)
    for (s, v), members in cells.items():
        base = {k: x for k, x in members[0].results["config"].items() if k not in SEED_KEYS}
        for other in members[1:]:
            diff = [d for d in differences(base, {k: x for k, x in other.results["config"].items() if k not in SEED_KEYS})
                    if d[0] not in (key, series)]
            if diff:
                k, a, b = diff[0]
                where = f"{series}={s}, " if series else ""
                return (f"--ablation {key}: the runs at {where}{key}={v} differ in {k} ({a}, {b}), not only in their seed; "
                        f"keep one with --where {k}=<value>, or split them with --series {k}")
    return None


def main(argv: list[str] | None = None) -> int:
    from peerlab.cli import ArgumentParser, output_folder

    ap = ArgumentParser(prog="python -m peerlab.analysis", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="folders searched (recursively) for results.json")
    ap.add_argument("--out", required=True, type=output_folder, help="where figures and tables are written")
    ap.add_argument("--ablation", help="config key on the x-axis of an ablation (e.g. layer.n_experts)")
    ap.add_argument("--series", help="config key that splits an ablation into series (e.g. layer.query_norm)")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="keep only runs whose config KEY (dotted; or budget) equals VALUE (numbers compare as numbers); repeatable")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the tables, figures and optima to one W&B run (job_type analysis, in the sweep's "
                         "group), offline without an API key; a rerun into the same --out updates that run")
    ap.add_argument("--baseline", help="with --ablation: a value of its key; each row adds its loss minus that row's "
                                       "(same series), in seed standard deviations (e.g. 1.0 for data.train_fraction)")
    args = ap.parse_args(argv)
    if args.baseline is not None and not args.ablation:
        ap.error("--baseline needs --ablation")
    if args.series is not None and not args.ablation:
        ap.error(f"--series {args.series}: needs --ablation (series split an ablation's x-axis)")
    try:
        where = [parse_where(w) for w in args.where]
    except ValueError as exc:
        ap.error(str(exc))
    runs, skipped = collect(args.dirs)
    kept = [r for r in runs if all(matches(r.config_value(k), v) for k, v in where)]
    if where:
        skipped["not matching --where"] = len(runs) - len(kept)
        runs = kept
    if not runs:
        print(f"error: no completed results.json under {', '.join(args.dirs)} (skipped: {skipped or 'none found'})", file=sys.stderr)
        return 2
    problem = check_same_data(runs)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.ablation:
        problem = check_ablation(runs, args.ablation, args.series)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    written, opts = [], []
    if args.ablation:
        (args.out / "ablation.md").write_text(tables.ablation_table(runs, args.ablation, args.series, args.baseline) + "\n")
        figures.ablation(runs, args.ablation, args.series, args.out / "ablation.png")
        written += ["ablation.md", "ablation.png"]
    else:
        opts = optima(runs)
        (args.out / "table1.md").write_text(tables.table1(opts) + "\n")
        (args.out / "optima.json").write_text(json.dumps([asdict(o) for o in opts], indent=2))
        figures.isoflop_curves(runs, opts, args.out / "isoflop.png")
        figures.loss_vs_flops(runs, opts, args.out / "loss_vs_flops.png")
        laws = fit_power_laws(opts)
        (args.out / "scaling.md").write_text(tables.scaling_table(laws, gaps_to(laws)) + "\n")
        (args.out / "equal_tokens.md").write_text(tables.equal_tokens_table(runs) + "\n")
        (args.out / "pairwise.md").write_text(tables.pairwise_table(opts) + "\n")
        written += ["table1.md", "optima.json", "isoflop.png", "loss_vs_flops.png", "scaling.md", "equal_tokens.md",
                    "pairwise.md"]
    (args.out / "runs.md").write_text(tables.runs_table(runs) + "\n")
    written.append("runs.md")
    print(f"{len(runs)} runs ({', '.join(f'{n} {s}' for s, n in skipped.items()) or 'none'} skipped); wrote "
          + ", ".join(str(args.out / w) for w in written))
    if args.wandb:
        from peerlab.analysis.wandb_run import log_analysis
        from peerlab.config import ConfigError

        try:
            where_to = log_analysis(args.out, runs, opts, written)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"W&B: analysis run {where_to['id']} (group {where_to['group']}): "
              + (where_to["url"] or f"offline in {where_to['folder']}; upload with: {where_to['sync']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
