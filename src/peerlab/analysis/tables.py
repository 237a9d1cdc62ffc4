"""Markdown tables in the style of the paper's Table 1 (compute-optimal loss) and Table 2 (usage ablation)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from peerlab.analysis.collect import Run
from peerlab.analysis.isoflop import Optimum
from peerlab.analysis.scaling import z_score
from peerlab.config import sci


def _pm(value: float | None, fmt: str) -> str:
    return "" if value is None else f" ± {value:{fmt}}"


def table1(opts: list[Optimum]) -> str:
    lines = [
        "| budget | method | optimal loss | ppl | seed std at the nearest size (seeds) | optimal size (dense-backbone params) | epochs there | sizes (runs) | bracketed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in opts:
        sizes = ", ".join(f"{s / 1e6:.2g}M ({n})" for s, n in zip(o.sizes, o.seeds, strict=True))
        size_pm = "" if o.size_std_log10 is None else f" (±{o.size_std_log10:.2f} dex)"
        spread = "-" if o.seed_std is None else f"{o.seed_std:.4f} ({o.seeds[o.best_index]})"
        epochs = "-" if not o.epochs or math.isnan(o.epochs[o.best_index]) else f"{o.epochs[o.best_index]:.2f}"
        lines.append(f"| {sci(o.budget)} | {o.method} | {o.loss:.4f}{_pm(o.loss_std, '.4f')} | {o.ppl:.2f} | {spread} | "
                     f"{o.size / 1e6:.3g}M{size_pm} | {epochs} | {sizes} | {'yes' if o.interior else 'no: best observed'} |")
    return "\n".join(lines)


def scaling_table(laws: dict, gaps: list) -> str:
    """Per method the fitted power law of optimal loss against budget, and its gap to dense with the trend."""
    lines = ["| method | loss = a C^-alpha: a | alpha | optima (bracketed) |", "|---|---|---|---|"]
    for method, law in sorted(laws.items()):
        optima = ", ".join(f"{sci(b)}: {v:.4f}{'' if ok else '*'}" for b, v, ok in zip(law.budgets, law.losses, law.bracketed, strict=True))
        a = "-" if law.a is None else f"{law.a:.4g}"
        alpha = "-" if law.alpha is None else f"{law.alpha:.4f}"
        lines.append(f"| {method} | {a} | {alpha} | {optima} |")
    lines += ["", "\\* best observed size, not a bracketed optimum.", "",
              "| method | gap to dense per budget (nats; in seed standard deviations of the difference) | gap trend per decade of budget | fitted laws cross at |",
              "|---|---|---|---|"]
    for g in gaps:
        per = ", ".join(f"{sci(b)}: {v:+.4f}" + ("" if z is None else f" ({z:+.1f} sd)")
                        for b, v, z in zip(g.budgets, g.gaps, g.z, strict=True))
        trend = "-" if g.slope_per_decade is None else f"{g.slope_per_decade:+.4f}"
        cross = "do not cross" if g.crossing_budget is None else (
            f"{g.crossing_budget:.3g} FLOPs ({'inside' if g.crossing_inside else 'outside: an extrapolation beyond'} the budgets run)")
        lines.append(f"| {g.method} | {per} | {trend} | {cross} |")
    return "\n".join(lines)


def welch_p(a: Optimum, b: Optimum) -> float | None:
    """Two-sided p-value of Welch's t-test that the two optima's losses are equal, from each one's seed standard
    deviation and seed count at its nearest sampled size (None with fewer than two seeds on either side)."""
    from scipy.stats import ttest_ind_from_stats

    na, nb = a.seeds[a.best_index], b.seeds[b.best_index]
    if a.seed_std is None or b.seed_std is None or na < 2 or nb < 2:
        return None
    if a.seed_std == 0 and b.seed_std == 0:
        return None
    return float(ttest_ind_from_stats(a.loss, a.seed_std, na, b.loss, b.seed_std, nb, equal_var=False).pvalue)


def pairwise_table(opts: list[Optimum]) -> str:
    """Every pair of methods at every budget: the difference of their optimal losses, that difference in seed
    standard deviations of the difference (hypot of the two seed spreads at the sizes nearest the optima), and the
    p-value of Welch's t-test on the same seeds."""
    lines = ["| budget | A | B | loss A - loss B | in seed sd of the difference | Welch's t-test p | ordering |",
             "|---|---|---|---|---|---|---|"]
    by_budget: dict[float, list[Optimum]] = defaultdict(list)
    for o in opts:
        by_budget[o.budget].append(o)
    for budget, group in sorted(by_budget.items()):
        group = sorted(group, key=lambda o: o.method)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                diff = a.loss - b.loss
                z = z_score(diff, a.seed_std, b.seed_std)
                z = "- (one seed)" if z is None else f"{z:+.1f}"
                p = welch_p(a, b)
                p = "-" if p is None else f"{p:.2g}"
                order = f"{a.method} < {b.method}" if diff < 0 else f"{b.method} < {a.method}"
                lines.append(f"| {sci(budget)} | {a.method} | {b.method} | {diff:+.4f} | {z} | {p} | {order} |")
    return "\n".join(lines)


def equal_tokens_table(runs: list[Run], base: str = "ffw", tolerance: float = 0.1) -> str:
    """Methods compared at (nearly) equal training tokens and the same model size and seed: each run of another
    method against the dense run of that size whose token count is closest, when within ``tolerance``."""
    dense = [r for r in runs if r.method == base]
    lines = [f"| size (dense-backbone params) | seed | method | budget | tokens | loss | {base} budget | {base} tokens | {base} loss | difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.params, r.method, r.budget, r.seed)):
        if r.method == base:
            continue
        peers = [d for d in dense if d.params == r.params and d.seed == r.seed]
        if not peers:
            continue
        d = min(peers, key=lambda d: abs(d.results["tokens"] / r.results["tokens"] - 1))
        if abs(d.results["tokens"] / r.results["tokens"] - 1) > tolerance:
            continue
        lines.append(f"| {r.params / 1e6:.3g}M | {r.seed} | {r.method} | {sci(r.budget)} | {r.results['tokens'] / 1e6:.3g}M | "
                     f"{r.loss:.4f} | {sci(d.budget)} | {d.results['tokens'] / 1e6:.3g}M | {d.loss:.4f} | {r.loss - d.loss:+.4f} |")
    return "\n".join(lines)


def ablation_table(runs: list[Run], key: str, series: str | None = None, baseline: str | None = None) -> str:
    """Final perplexity, expert usage and unevenness against a config key (e.g. layer.n_experts), per series. With
    ``baseline`` (a value of ``key``, compared as text), each row also gives its mean loss minus the baseline row's
    in the same series, and that difference in standard deviations of the difference (the two rows' seed standard
    deviations combined: hypot(sd_row, sd_baseline))."""
    rows: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        rows[(r.config_value(series) if series else "", r.config_value(key))].append(r)
    mean = {k: sum(r.loss for r in rs) / len(rs) for k, rs in rows.items()}
    sd = {k: statistics.stdev([r.loss for r in rs]) if len(rs) > 1 else None for k, rs in rows.items()}
    base = {s: k for (s, k) in rows if baseline is not None and str(k) == baseline}
    cols = "runs | ppl | expert usage | unevenness | loss (seed std) |" + (f" loss - loss at {baseline} |" if baseline else "")
    head = f"| {series or ''} | {key} | {cols}" if series else f"| {key} | {cols}"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for (s, k), rs in sorted(rows.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] if kv[0][1] is not None else 0)):
        loss = mean[(s, k)]
        usage = [r.results.get("usage", {}).get("val/expert_usage") for r in rs]
        uneven = [r.results.get("usage", {}).get("val/unevenness") for r in rs]
        fmt = lambda v: f"{100 * sum(v) / len(v):.1f}%" if None not in v else "-"  # noqa: E731
        fmt_u = lambda v: f"{sum(v) / len(v):.3f}" if None not in v else "-"  # noqa: E731
        cells = [str(s)] if series else []
        spread = "" if sd[(s, k)] is None else f" ({sd[(s, k)]:.4f})"
        cells += [str(k), str(len(rs)), f"{math.exp(loss):.2f}", fmt(usage), fmt_u(uneven), f"{loss:.4f}{spread}"]
        if baseline:
            cells.append(_difference(mean, sd, (s, k), (s, base[s])) if s in base else "no baseline row")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference(mean: dict, sd: dict, row: tuple, base: tuple) -> str:
    if row == base:
        return "-"
    diff = mean[row] - mean[base]
    z = z_score(diff, sd[row], sd[base])
    return f"{diff:+.4f}" + ("" if z is None else f" ({z:+.1f} sd)")


def runs_table(runs: list[Run]) -> str:
    """Every run: what it cost per token, what it saw and where it ended. Rows with the same tokens but different
    methods compare the layers at equal data rather than equal FLOPs."""
    lines = ["| budget | method | size (dense-backbone params) | seed | train FLOPs/token | steps | tokens | epochs | final loss | expert usage |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.budget, r.params, r.method, r.seed)):
        res = r.results
        usage = (res.get("usage") or {}).get("val/expert_usage")
        lines.append(f"| {sci(r.budget)} | {r.method} | {r.params / 1e6:.3g}M | {r.seed} | "
                     f"{res.get('flops_per_token_train', 0) / 1e6:.3g}M | {res.get('steps', '-')} | "
                     f"{res.get('tokens', 0) / 1e6:.3g}M | {res.get('epochs', 0):.2f} | {r.loss:.4f} | "
                     f"{'-' if usage is None else f'{100 * usage:.1f}%'} |")
    return "\n".join(lines)
