"""How each method's compute-optimal loss scales with the budget, and whether its gap to dense closes.

Per method, a power law ``loss = a * C^(-alpha)`` is fitted to the optimal losses across budgets (least squares in
log-log). The gap to dense at each budget is measured (optimum against optimum); its trend is the slope of the gap
per decade of budget; where the two fitted laws cross, the crossing budget is reported, flagged as an
extrapolation when it lies outside the budgets measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from peerlab.analysis.isoflop import Optimum


def z_score(diff: float, sd_a: float | None, sd_b: float | None) -> float | None:
    """A difference in standard deviations of the difference, ``hypot(sd_a, sd_b)``; ``None`` when either side has
    no seed spread (one seed) or both spreads are zero."""
    if sd_a is None or sd_b is None or math.hypot(sd_a, sd_b) == 0:
        return None
    return diff / math.hypot(sd_a, sd_b)


@dataclass
class PowerLaw:
    method: str
    budgets: list[float]
    losses: list[float]
    bracketed: list[bool]
    seed_stds: list[float | None]  # seed standard deviation at the size nearest each optimum
    a: float | None
    alpha: float | None  # loss = a * C^-alpha

    def predict(self, budget: float) -> float | None:
        return None if self.a is None else self.a * budget ** (-self.alpha)


@dataclass
class Gap:
    method: str
    budgets: list[float]
    gaps: list[float]  # method's optimal loss - dense's, per budget (negative: the method wins)
    z: list[float | None]  # gap / sqrt(std_method^2 + std_dense^2), the two seed spreads, when both were measured
    slope_per_decade: float | None
    crossing_budget: float | None  # where the fitted laws meet
    crossing_inside: bool


def fit_power_laws(opts: list[Optimum]) -> dict[str, PowerLaw]:
    by_method: dict[str, list[Optimum]] = {}
    for o in sorted(opts, key=lambda o: o.budget):
        by_method.setdefault(o.method, []).append(o)
    laws = {}
    for method, os_ in by_method.items():
        budgets, losses = [o.budget for o in os_], [o.loss for o in os_]
        a = alpha = None
        if len(os_) >= 2:
            slope, intercept = np.polyfit(np.log10(budgets), np.log10(losses), 1)
            a, alpha = float(10**intercept), float(-slope)
        laws[method] = PowerLaw(method, budgets, losses, [o.interior for o in os_], [o.seed_std for o in os_], a, alpha)
    return laws


def gaps_to(laws: dict[str, PowerLaw], base: str = "ffw") -> list[Gap]:
    if base not in laws:
        return []
    ref = laws[base]
    out = []
    for method, law in sorted(laws.items()):
        if method == base:
            continue
        common = [b for b in law.budgets if b in ref.budgets]
        gaps = [law.losses[law.budgets.index(b)] - ref.losses[ref.budgets.index(b)] for b in common]
        z = [z_score(gap, law.seed_stds[law.budgets.index(b)], ref.seed_stds[ref.budgets.index(b)])
             for b, gap in zip(common, gaps, strict=True)]
        slope = float(np.polyfit(np.log10(common), gaps, 1)[0]) if len(common) >= 2 else None
        crossing, inside = None, False
        if law.alpha is not None and ref.alpha is not None and not math.isclose(law.alpha, ref.alpha):
            log_c = math.log10(law.a / ref.a) / (law.alpha - ref.alpha)
            if -30 < log_c < 60:
                crossing = 10**log_c
                inside = min(common) <= crossing <= max(common) if common else False
        out.append(Gap(method, common, gaps, z, slope, crossing, inside))
    return out
