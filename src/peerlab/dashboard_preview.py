"""What a dashboard view shows, drawn offline: ``python -m peerlab.dashboard ... --preview view.png``.

Each panel of one saved view's spec (the JSON ``save()`` uploads) is drawn from the runs' own ``.wandb`` files: a
line plot's metric against its x-axis for every run the view's budget filter keeps, a scatter of its two summary
keys. Lines are coloured by layer and drawn per model size, as W&B draws the view grouped by layer and model. It is
a picture of the spec, not of W&B's renderer: what a panel names is what is drawn, so a panel left empty here would
be empty there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunRecord:
    layer: str
    model: str
    budget: float
    history: list[dict]
    summary: dict


def load_runs(sweep_dir: Path) -> list[RunRecord]:
    """Each completed point of the sweep with its W&B history and summary (every start's folder, in order)."""
    import json

    from peerlab import wandb_offline

    runs = []
    for path in sorted(Path(sweep_dir).glob("*/results.json")):
        record = json.loads(path.read_text())
        folders = record.get("wandb_dirs") or []
        if not folders:
            continue
        history, summary = [], {}
        for folder in folders:
            history += wandb_offline.history(folder)
            summary.update(wandb_offline.summary(folder))
        cfg = record["config"]
        runs.append(RunRecord(cfg["layer"]["name"], cfg["model"]["name"], float(record["budget"]), history, summary))
    return runs


def _view_budget(spec: dict) -> float | None:
    for f in spec["section"]["runSets"][0]["filters"].get("filters", []):
        if f["key"] == {"section": "config", "name": "budget"}:
            return float(f["value"])
    return None


def draw(view: dict, runs: list[RunRecord], out: Path) -> int:
    """Draw ``view`` (``{"name", "spec"}``) to ``out``; returns the number of panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peerlab.analysis.figures import LABEL, TITLE, _flops_axis, _legend_outside, _params_axis, _style

    budget = _view_budget(view["spec"])
    shown = [r for r in runs if budget is None or r.budget == budget]
    sections = [s for s in view["spec"]["section"]["panelBankConfig"]["sections"] if s.get("panels")]
    cols = max(len(s["panels"]) for s in sections)
    fig, axes = plt.subplots(len(sections), cols, figsize=(5.2 * cols + 1.8, 3.4 * len(sections)), squeeze=False)
    models = sorted({r.model for r in shown})
    styles = ["-", "--", ":", "-."]
    drawn = 0
    for row, section in zip(axes, sections, strict=True):
        for ax in row[len(section["panels"]):]:
            ax.set_visible(False)
        for ax, panel in zip(row, section["panels"], strict=False):
            config = panel["config"]
            ax.set_title(f"{section['name']}: {config.get('chartTitle', '')}", fontsize=TITLE - 2)
            if panel["viewType"] == "Scatter Plot":
                x, y = (config[k].removeprefix("summary:") for k in ("xAxis", "yAxis"))
                for r in shown:
                    if x in r.summary and y in r.summary:
                        color, marker = _style(r.layer)
                        ax.scatter(r.summary[x], r.summary[y], color=color, marker=marker, s=40, label=r.layer)
                if config.get("xAxisLogScale"):
                    _params_axis(ax)
                ax.set_xlabel(x, fontsize=LABEL)
                ax.set_ylabel(y, fontsize=LABEL)
            else:
                x, (metric,) = config["xAxis"], config["metrics"]
                for r in shown:
                    points = [(h[x], h[metric]) for h in r.history if x in h and metric in h]
                    if points:
                        ax.plot(*zip(*points, strict=True), color=_style(r.layer)[0], lw=1.2,
                                ls=styles[models.index(r.model) % len(styles)], label=f"{r.layer} {r.model}")
                if config.get("xLogScale"):
                    _flops_axis(ax)
                ax.set_xlabel(config.get("xAxisTitle") or x, fontsize=LABEL)
                ax.set_ylabel(metric, fontsize=LABEL)
            drawn += 1
    fig.suptitle(f"W&B view '{view['name']}' ({len(shown)} runs), drawn from its spec and the runs' offline files",
                 fontsize=TITLE)
    _legend_outside(fig, list(axes.flat))
    fig.tight_layout()
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return drawn
