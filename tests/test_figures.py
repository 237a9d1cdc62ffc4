"""Figures draw what a run has and label what was fitted: a one-point curve, final points at one budget, and
isoFLOP stars that say whether they are a parabola's vertex."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peerlab.analysis import figures  # noqa: E402
from peerlab.analysis.collect import Run  # noqa: E402
from peerlab.analysis.isoflop import optima  # noqa: E402


def write_run(folder, val_rows, flops=2e10, loss=4.5):
    (folder / "csv").mkdir(parents=True)
    lines = ["step,flops,val/loss"] + [f"{i},{f},{v}" for i, (f, v) in enumerate(val_rows)]
    (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "results.json").write_text(json.dumps({"flops": flops, "final_val_loss": loss}))


def test_a_run_with_one_periodic_validation_draws_a_point(tmp_path):
    write_run(tmp_path / "r", [(1e10, 5.0)])
    fig, ax = plt.subplots()
    figures.draw_curves([("dense", "ffw", tmp_path / "r")], tmp_path / "x.png", "t", ax=ax)
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "dense"]
    assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "")
    plt.close(fig)


def test_final_points_at_one_budget_get_a_readable_axis(tmp_path):
    write_run(tmp_path / "a", [], flops=1.966e10)
    write_run(tmp_path / "b", [], flops=1.972e10)
    fig, ax = plt.subplots()
    figures.draw_curves([("a", "ffw", tmp_path / "a"), ("b", "peer", tmp_path / "b")], tmp_path / "x.png", "t", ax=ax)
    low, high = ax.get_xlim()
    assert low < 1.966e10 / 2 and high > 1.972e10 * 2  # not an axis 0.3% wide
    plt.close(fig)


def isoflop_legend(tmp_path, monkeypatch, losses):
    runs = [Run(tmp_path, "ffw", 1e12, size, loss, 0, {}) for size, loss in zip((1e5, 2e5, 4e5), losses, strict=True)]
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    figures.isoflop_curves(runs, optima(runs), tmp_path / "isoflop.png")
    return [t.get_text() for t in kept[0].legends[0].get_texts()]


def test_isoflop_stars_say_whether_a_parabola_was_fitted(tmp_path, monkeypatch):
    fitted = isoflop_legend(tmp_path, monkeypatch, (3.0, 2.8, 3.0))  # an interior minimum: a vertex
    assert "optimum (parabola vertex)" in fitted and "best observed size (no parabola vertex)" not in fitted
    edge = isoflop_legend(tmp_path, monkeypatch, (3.0, 2.9, 2.8))  # still falling: no vertex inside the sizes
    assert "best observed size (no parabola vertex)" in edge and "optimum (parabola vertex)" not in edge
