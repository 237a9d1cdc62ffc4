"""Chinchilla approach 2: per budget and method, a parabola of final loss in log(size) through the best observed
size and its neighbour on each side; its vertex is the compute-optimal size and loss. Uncertainty by bootstrap over
those runs (seeds of one size are averaged first)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from peerlab.analysis.collect import Run


@dataclass
class Optimum:
    method: str
    budget: float
    sizes: list[float]
    losses: list[float]  # mean over seeds, per size
    seeds: list[int]  # runs per size
    coef: tuple[float, float, float] | None  # loss = a x^2 + b x + c, x = log10(size)
    size: float  # compute-optimal size (vertex, or best observed when there is no interior minimum)
    loss: float
    size_std_log10: float | None
    loss_std: float | None
    interior: bool  # the vertex lies inside the sampled sizes
    spreads: list[float | None] | None = None  # seed standard deviation per size (None: one seed)
    epochs: list[float] | None = None  # passes over the training data per size (mean over seeds)

    @property
    def best_index(self) -> int:
        """The sampled size nearest the optimum (in log size)."""
        return int(np.argmin([abs(math.log(s / self.size)) for s in self.sizes]))

    @property
    def seed_std(self) -> float | None:
        """Seed standard deviation at the sampled size nearest the optimum, when it ran several seeds."""
        return self.spreads[self.best_index] if self.spreads else None

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    if len(np.unique(x)) < 3:
        return None
    a, b, c = np.polyfit(x, y, 2)
    return float(a), float(b), float(c)


def _vertex(coef, x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """The fitted minimum when the grid brackets it: the best observed size has a worse size on each side and the
    vertex lies inside the sampled range. Otherwise the best observed point, flagged as not bracketed (a vertex
    just past a grid edge is an extrapolation however close it sits)."""
    i = int(np.argmin(y))
    best_inside = x[i] != x.min() and x[i] != x.max()
    if coef is not None and coef[0] > 0 and best_inside:
        a, b, c = coef
        xv = -b / (2 * a)
        if x.min() <= xv <= x.max():
            return xv, c - b * b / (4 * a), True
    return float(x[i]), float(y[i]), False


def _means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean of ``y`` per distinct ``x``, in the order of ``np.unique(x)``."""
    return np.array([y[x == v].mean() for v in np.unique(x)])


def fit_window(means: list[float], neighbours: int = 1) -> slice:
    """The sizes (sorted ascending, with these mean losses) that the parabola is fitted through: the best observed
    one and ``neighbours`` on each side. The parabola describes the loss near its minimum, not a grid spanning more
    than a decade, where the loss rises far more steeply on the large side than on the small one."""
    best = int(np.argmin(means))
    return slice(max(0, best - neighbours), best + neighbours + 1)


def fit_optimum(method: str, budget: float, runs: list[Run], bootstrap: int = 1000, seed: int = 0) -> Optimum:
    by_size: dict[float, list[Run]] = defaultdict(list)
    for r in runs:
        by_size[r.params].append(r)
    sizes = sorted(by_size)
    means = [float(np.mean([r.loss for r in by_size[s]])) for s in sizes]
    # Fit on the window around the best size; report every size (with its mean, seeds, spread and epochs).
    window = set(sizes[fit_window(means)])
    fitted = [r for r in runs if r.params in window]  # in the runs' order, which the bootstrap's draws index
    pts_x = np.log10(np.array([r.params for r in fitted]))
    pts_y = np.array([r.loss for r in fitted])
    x, y = np.unique(pts_x), _means(pts_x, pts_y)  # one point per size: the mean over its seeds
    coef = _fit(x, y)
    xv, lv, interior = _vertex(coef, x, y)
    size_std = loss_std = None
    # An unbracketed "optimum" is a grid edge, and three runs fit a parabola exactly: no uncertainty to speak of.
    if coef is not None and interior and len(fitted) > 3:
        # Resample runs (seeds included) with replacement; keep resamples that still span three sizes.
        rng = np.random.default_rng(seed)
        xs, ls = [], []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(fitted), len(fitted))
            c = _fit(pts_x[idx], pts_y[idx])
            if c is None:
                continue
            bx, bl, _ = _vertex(c, np.unique(pts_x[idx]), _means(pts_x[idx], pts_y[idx]))
            xs.append(bx)
            ls.append(bl)
        if len(xs) >= 10:
            size_std, loss_std = float(np.std(xs)), float(np.std(ls))
    spreads = [float(np.std([r.loss for r in by_size[s]], ddof=1)) if len(by_size[s]) > 1 else None for s in sizes]
    epochs = [float(np.mean([r.results.get("epochs", float("nan")) for r in by_size[s]])) for s in sizes]
    return Optimum(method, budget, sizes, means, [len(by_size[s]) for s in sizes], coef, 10**xv, lv,
                   size_std, loss_std, interior, spreads, epochs)


def optima(runs: list[Run]) -> list[Optimum]:
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.method, r.budget)].append(r)
    return [fit_optimum(m, b, rs) for (m, b), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
