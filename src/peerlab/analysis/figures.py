"""PNG figures: isoFLOP curves (the paper's Figure 1), validation loss against FLOPs, and ablations."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from peerlab.analysis.collect import Run  # noqa: E402
from peerlab.analysis.isoflop import Optimum, fit_window  # noqa: E402
from peerlab.config import sci  # noqa: E402

STYLE = {"ffw": ("black", "o"), "moe": ("tab:blue", "s"), "pkm": ("tab:green", "^"), "peer": ("tab:red", "D"),
         "moe_fine": ("tab:cyan", "v"), "memory_plus": ("tab:purple", "P"), "peer_linear": ("tab:orange", "X"),
         "peer_matched_wide": ("tab:brown", "d")}


def _style(method: str) -> tuple[str, str]:
    """A method's own style, else its family's (``peer_matched`` -> ``peer``)."""
    return STYLE.get(method) or STYLE.get(method.split("_")[0], ("tab:gray", "x"))


def isoflop_curves(runs: list[Run], opts: list[Optimum], path: Path) -> None:
    budgets = sorted({o.budget for o in opts})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for o in (o for o in opts if o.budget == budget):
            color, marker = _style(o.method)
            pts = [(r.params, r.loss) for r in runs if r.method == o.method and r.budget == budget]
            ax.scatter([p for p, _ in pts], [loss for _, loss in pts], color=color, marker=marker, label=o.method, alpha=0.8)
            if o.coef is not None:
                window = o.sizes[fit_window(o.losses)]  # the parabola only where it was fitted
                xs = np.linspace(np.log10(min(window)), np.log10(max(window)), 100)
                ax.plot(10**xs, np.polyval(o.coef, xs), color=color, lw=1)
            ax.scatter([o.size], [o.loss], color=color, marker="*", s=150, edgecolor="k", zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("parameters (dense backbone)")
        ax.set_ylabel("final validation loss (nats)")
        ax.set_title(f"isoFLOP {sci(budget)} FLOPs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def val_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(cumulative FLOPs, validation loss) at each validation of a run, from its metrics.csv."""
    metrics = Path(run_dir) / "csv" / "metrics.csv"
    if not metrics.is_file():
        return []
    with open(metrics) as fh:
        return [(float(r["flops"]), float(r["val/loss"])) for r in csv.DictReader(fh) if r.get("val/loss")]


def draw_curves(curves: list[tuple[str, str, list[tuple[float, float]], float]], path: Path, title: str | None = None) -> None:
    """One line per ``(label, method, rows, alpha)``: validation loss against training FLOPs, log x-axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, method, rows, alpha in curves:
        if rows:
            ax.plot(*zip(*rows, strict=True), color=_style(method)[0], alpha=alpha, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (nats)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def loss_vs_flops(runs: list[Run], opts: list[Optimum], path: Path) -> None:
    """Validation loss against cumulative FLOPs for each method's run nearest its compute-optimal size."""
    curves = []
    top = max((o.budget for o in opts), default=0)
    for o in opts:
        candidates = [r for r in runs if r.method == o.method and r.budget == o.budget]
        best = min(candidates, key=lambda r: abs(np.log(r.params) - np.log(o.size)))
        curves.append((f"{o.method} {sci(o.budget)}", o.method, val_curve(best.path), 0.4 + 0.6 * (o.budget == top)))
    draw_curves(curves, path)


def ablation(runs: list[Run], key: str, series: str | None, path: Path) -> None:
    """Perplexity against ``key``, one line per ``series`` through the seed means (error bars: the seeds' standard
    deviation, carried to perplexity): a log2 axis for numbers (N, h*k), categories otherwise (e.g.
    layer.query_norm batch / none)."""
    values = {r.config_value(key) for r in runs}
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    categories = sorted(map(str, values))
    groups: dict[object, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        v = r.config_value(key)
        x = float(v) if numeric else float(categories.index(str(v)))
        groups[r.config_value(series) if series else "runs"].append((x, r.loss))
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, pts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        # One point per value: the mean loss over seeds, with the seeds' standard deviation as the error bar, and
        # each seed as a faint dot (a line through every seed would zigzag).
        by_x: dict[float, list[float]] = defaultdict(list)
        for x, loss in pts:
            by_x[x].append(loss)
        xs = sorted(by_x)
        means = [float(np.mean(by_x[x])) for x in xs]
        sds = [float(np.std(by_x[x], ddof=1)) if len(by_x[x]) > 1 else 0.0 for x in xs]
        line = ax.errorbar(xs, np.exp(means), yerr=[np.exp(m) * sd for m, sd in zip(means, sds, strict=True)], marker="o",
                           capsize=3, label=f"{series}={name}" if series else None)
        ax.scatter([x for x, _ in pts], [np.exp(v) for _, v in pts], s=10, alpha=0.35, color=line[0].get_color())
    if numeric:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(key)
    ax.set_ylabel("validation perplexity")
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
