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
from peerlab.config import human_count, sci  # noqa: E402

STYLE = {"ffw": ("black", "o"), "moe": ("tab:blue", "s"), "pkm": ("tab:green", "^"), "peer": ("tab:red", "D"),
         "moe_fine": ("tab:cyan", "v"), "memory_plus": ("tab:purple", "P"), "peer_linear": ("tab:orange", "X"),
         "peer_matched_wide": ("tab:brown", "d")}


def _style(method: str) -> tuple[str, str]:
    """A method's own style, else its family's (``peer_matched`` -> ``peer``)."""
    return STYLE.get(method) or STYLE.get(method.split("_")[0], ("tab:gray", "x"))


TITLE = 11  # font sizes that stay readable on a slide
LABEL = 10
TICK = 9
LEGEND = 8


def _log_x_axis(ax, label) -> None:
    """A log x axis ticked at 1, 2 and 5 per decade, each tick written by ``label``: matplotlib's default labels
    every minor tick in scientific notation, and they overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: label(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=TICK)


def _params_axis(ax) -> None:
    """Parameter counts: 100k, 200k, 500k, 1M ..."""
    _log_x_axis(ax, human_count)


def _flops_axis(ax) -> None:
    """FLOPs: 1e12, 2e12, 5e12 ..."""
    _log_x_axis(ax, sci)



def _grid(n: int, width: float = 4.6, height: float = 3.8):
    cols = 2 if n == 4 else min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.6, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the panels, with each label once: it covers no data."""
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=LEGEND, frameon=False)


def isoflop_curves(runs: list[Run], opts: list[Optimum], path: Path) -> None:
    """The paper's Figure 1: final validation loss against model size, one panel per budget, each method's fitted
    parabola where it was fitted and its optimum starred."""
    budgets = sorted({o.budget for o in opts})
    kinds: set[bool] = set()  # which kinds of optimum were drawn: True a parabola's vertex, False the best observed
    fig, axes = _grid(len(budgets))
    for ax, budget in zip(axes, budgets, strict=True):
        for o in (o for o in opts if o.budget == budget):
            color, marker = _style(o.method)
            pts = [(r.params, r.loss) for r in runs if r.method == o.method and r.budget == budget]
            ax.scatter([p for p, _ in pts], [loss for _, loss in pts], color=color, marker=marker, label=o.method,
                       alpha=0.8, s=22)
            if o.coef is not None:
                window = o.sizes[fit_window(o.losses)]  # the parabola only where it was fitted
                xs = np.linspace(np.log10(min(window)), np.log10(max(window)), 100)
                ax.plot(10**xs, np.polyval(o.coef, xs), color=color, lw=1)
            vertex = o.coef is not None and o.interior
            kinds.add(vertex)
            ax.scatter([o.size], [o.loss], color=color if vertex else "white", marker="*", s=150,
                       edgecolor=color if not vertex else "k", linewidths=1.5, zorder=5)
        _params_axis(ax)
        ax.set_xlabel("model size: parameters of the dense backbone", fontsize=LABEL)
        ax.set_ylabel("final validation loss (nats)", fontsize=LABEL)
        ax.set_title(f"{sci(budget)} FLOPs", fontsize=TITLE)
    # say what each star is: a fitted parabola's vertex, or (no parabola, or its vertex outside the sizes) the best
    # observed size
    if True in kinds:
        axes[0].scatter([], [], marker="*", s=150, color="gray", edgecolor="k", label="optimum (parabola vertex)")
    if False in kinds:
        axes[0].scatter([], [], marker="*", s=150, color="white", edgecolor="gray", linewidths=1.5,
                        label="best observed size (no parabola vertex)")
    fig.suptitle("isoFLOP curves: final validation loss against model size at each budget", fontsize=TITLE + 1)
    _legend_outside(fig, axes)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def val_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(cumulative FLOPs, validation loss) at each periodic validation of a run, from its metrics.csv."""
    metrics = Path(run_dir) / "csv" / "metrics.csv"
    if not metrics.is_file():
        return []
    with open(metrics) as fh:
        return [(float(r["flops"]), float(r["val/loss"])) for r in csv.DictReader(fh) if r.get("val/loss")]


def run_curve(run_dir: Path) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
    """A run's periodic validations and its final one (FLOPs, loss) from results.json: the value tables quote,
    made after the last step on the whole validation split. A run shorter than one validation period has the final
    point only."""
    import json

    try:
        r = json.loads((Path(run_dir) / "results.json").read_text())
        final = (float(r["flops"]), float(r["final_val_loss"]))
    except (OSError, KeyError, TypeError, ValueError):
        final = None
    return val_curve(run_dir), final


def draw_curves(curves: list[tuple[str, str, Path]], path: Path, title: str, ax=None) -> None:
    """One curve per ``(label, method, run folder)``: validation loss against training FLOPs (log x), the final
    validation marked and labelled with its value."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    linestyles = ["-", "--", ":", "-."]
    xs: list[float] = []
    for i, (label, method, run_dir) in enumerate(curves):
        rows, final = run_curve(run_dir)
        color = _style(method)[0]
        ls = linestyles[i // max(1, len(STYLE)) % len(linestyles)]
        if rows:  # one periodic validation is a point, not a line of length zero
            ax.plot(*zip(*rows, strict=True), color=color, ls=ls, lw=1.4, label=label,
                    marker="." if len(rows) == 1 else None, ms=8)
        xs += [x for x, _ in rows] + ([final[0]] if final else [])
        if final:
            ax.scatter(*final, color=color, marker=_style(method)[1], s=40, edgecolor="k", zorder=5,
                       label=None if rows else label)
            ax.annotate(f"{final[1]:.3f}", final, xytext=(6, 6 - 12 * i), textcoords="offset points", fontsize=LEGEND,
                        color=color, va="center")
    _flops_axis(ax)
    ax.set_xlabel("training FLOPs", fontsize=LABEL)
    ax.set_ylabel("validation loss (nats)", fontsize=LABEL)
    ax.set_title(title, fontsize=TITLE)
    ax.margins(x=0.12)
    if xs and max(xs) < 1.5 * min(xs):  # final points only, at nearly one budget: a decade around them, not 0.3%
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
    if own:
        _key_entries(ax)
        ax.legend(fontsize=LEGEND, loc="upper right", frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)


def _key_entries(ax) -> None:
    """What the lines and the markers are: two different measurements, on the validation split's first batches
    while training and on the whole split at the end."""
    ax.plot([], [], color="gray", label="line: periodic validation (trainer.val_batches batches)")
    ax.scatter([], [], marker="o", color="white", edgecolor="k", label="marker: final validation (whole split)")


def loss_vs_flops(runs: list[Run], opts: list[Optimum], path: Path) -> None:
    """Validation loss against cumulative FLOPs, one panel per budget: each method's run nearest its
    compute-optimal size, with the final validation marked."""
    budgets = sorted({o.budget for o in opts})
    fig, axes = _grid(len(budgets), width=5.0)
    for ax, budget in zip(axes, budgets, strict=True):
        curves = []
        for o in (o for o in opts if o.budget == budget):
            candidates = [r for r in runs if r.method == o.method and r.budget == o.budget]
            best = min(candidates, key=lambda r: abs(np.log(r.params) - np.log(o.size)))
            curves.append((o.method, o.method, best.path))
        draw_curves(curves, path, f"{sci(budget)} FLOPs: each method at its optimal size", ax=ax)
    _key_entries(axes[0])
    fig.suptitle("Validation loss against training FLOPs", fontsize=TITLE + 1)
    _legend_outside(fig, axes)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def ablation(runs: list[Run], key: str, series: str | None, path: Path) -> None:
    """Perplexity against ``key``, one series per value of ``series``: the mean over seeds with the seeds'
    standard deviation as error bars (carried to perplexity), each seed a faint dot; numbers on a log2 axis and
    joined by a line, categories side by side and not joined (there is no order between them)."""
    values = {r.config_value(key) for r in runs}
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    categories = sorted(map(str, values))
    groups: dict[object, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        v = r.config_value(key)
        x = float(v) if numeric else float(categories.index(str(v)))
        groups[r.config_value(series) if series else "runs"].append((x, r.loss))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    offsets = np.linspace(-0.15, 0.15, len(groups)) if not numeric and len(groups) > 1 else np.zeros(len(groups))
    most_seeds = 1
    for (name, pts), shift in zip(sorted(groups.items(), key=lambda kv: str(kv[0])), offsets, strict=True):
        by_x: dict[float, list[float]] = defaultdict(list)
        for x, loss in pts:
            by_x[x].append(loss)
        xs = sorted(by_x)
        most_seeds = max(most_seeds, *(len(v) for v in by_x.values()))
        means = [float(np.mean(by_x[x])) for x in xs]
        sds = [float(np.std(by_x[x], ddof=1)) if len(by_x[x]) > 1 else 0.0 for x in xs]
        shown = [x + shift for x in xs]
        line = ax.errorbar(shown, np.exp(means), yerr=[np.exp(m) * sd for m, sd in zip(means, sds, strict=True)],
                           marker="o", capsize=3, ls="-" if numeric else "none",
                           label=f"{series}={name}" if series else "mean over seeds")
        ax.scatter([x + shift for x, _ in pts], [np.exp(v) for _, v in pts], s=10, alpha=0.35, color=line[0].get_color())
    if numeric:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(key, fontsize=LABEL)
    ax.set_ylabel("final validation perplexity", fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    common = _common_settings(runs, (key, series))
    ax.set_title(f"{key}" + (f" x {series}" if series else "") + (f" ({common})" if common else ""), fontsize=TITLE)
    ax.plot([], [], color="gray", marker="|", ls="none", markersize=10,
            label="error bars: seed standard deviation" if most_seeds > 1 else "one seed per point: no error bars")
    ax.legend(fontsize=LEGEND, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _common_settings(runs: list[Run], skip: tuple) -> str:
    """``budget 8e12, model s3``: the settings every run shares, for a title."""
    parts = []
    for label, key in (("budget", "budget"), ("model", "model.name"), ("layer", "layer.name")):
        if key in skip:
            continue
        values = {r.config_value(key) for r in runs}
        if len(values) == 1:
            (v,) = values
            parts.append(f"{label} {sci(v) if key == 'budget' else v}")
    return ", ".join(parts)
