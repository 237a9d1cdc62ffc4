"""Gather finished runs from sweep folders into flat records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerlab.config import ADDED_KEYS


@dataclass
class Run:
    path: Path
    method: str
    budget: float
    params: float  # model size on the isoFLOP x-axis (see ``size_of``)
    loss: float
    seed: int
    results: dict = field(repr=False)

    def config_value(self, dotted: str) -> Any:
        """A config value by dotted key; ``budget`` is the run's budget; a key the run's code predates has its
        neutral value (``config.ADDED_KEYS``)."""
        if dotted == "budget":
            return self.budget
        node: Any = self.results.get("config", {})
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return ADDED_KEYS.get(dotted)
            node = node[part]
        return node


def size_of(results: dict) -> float:
    """The dense backbone's parameter count: the paper's x-axis, the same for every layer swapped into one model."""
    return float(results.get("params_dense_backbone") or results["params_active"])


def collect(dirs: list[str | Path], statuses: tuple[str, ...] = ("completed",)) -> tuple[list[Run], dict[str, int]]:
    """Completed runs under ``dirs`` (any depth), and a count of the runs skipped by status."""
    runs, skipped = [], {}
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            try:
                r = json.loads(path.read_text())
            except json.JSONDecodeError:
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                continue
            if r.get("status") not in statuses:
                skipped[r.get("status", "?")] = skipped.get(r.get("status", "?"), 0) + 1
                continue
            runs.append(Run(path.parent, r["config"]["layer"]["name"], float(r["budget"]), size_of(r),
                            float(r["final_val_loss"]), int(r["config"].get("seed", 0)), r))
    return runs, skipped
