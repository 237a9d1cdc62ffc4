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


MOVED_ASIDE = ".previous-"  # run_folder.move_aside's folders: <run>.previous-<time>
# The data config's keys that choose the corpus (not how much of it is used, nor how it is batched or cached).
CORPUS_KEYS = ("kind", "name", "sources", "files", "val_fraction", "path", "train_shards", "val_shards",
               "max_documents", "text_field")


def data_identity(results: dict, fingerprint: bool = True) -> dict:
    """What a run was trained and validated on: its data fingerprint where it has one and ``fingerprint`` (corpus,
    tokenizer, tokens), else the corpus keys of its data config and its tokenizer config; the vocabulary in both."""
    recorded = results.get("data") or {}
    if fingerprint and recorded.get("tokens"):
        return {"data fingerprint": recorded.get("tokens"), "tokenizer": recorded.get("tokenizer"),
                "vocab_size": results.get("vocab_size")}
    cfg = results.get("config", {})
    data = cfg.get("data") or {}
    return {"data": {k: data.get(k) for k in CORPUS_KEYS if k in data}, "tokenizer": cfg.get("tokenizer"),
            "vocab_size": results.get("vocab_size")}


def check_same_data(runs: list[Run]) -> str | None:
    """An error line when the runs were not all trained on the same data, tokenizer and vocabulary (their losses
    are not comparable), naming two of them and the first difference; None when they agree."""
    if not runs:
        return None
    base = runs[0]
    ref = data_identity(base.results)
    for other in runs[1:]:
        mine = data_identity(other.results)
        if set(mine) != set(ref):  # one run predates fingerprints: compare what both record, their configs
            a, b = data_identity(base.results, fingerprint=False), data_identity(other.results, fingerprint=False)
        else:
            a, b = ref, mine
        pairs = [(k, a[k], b[k]) for k in a if a[k] != b[k]]
        if pairs:
            key, a, b = pairs[0]
            return (f"{base.path} and {other.path} were trained on different data ({key}: {a!r} and {b!r}): their losses "
                    "are not comparable; analyse them separately, or keep one kind with --where")
    return None


def size_of(results: dict) -> float:
    """The dense backbone's parameter count: the paper's x-axis, the same for every layer swapped into one model."""
    return float(results.get("params_dense_backbone") or results["params_active"])


def collect(dirs: list[str | Path], statuses: tuple[str, ...] = ("completed",)) -> tuple[list[Run], dict[str, int]]:
    """Completed runs under ``dirs`` (any depth), and a count of the runs skipped by status."""
    runs, skipped = [], {}
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            if any(MOVED_ASIDE in part for part in path.relative_to(d).parts):
                continue  # an earlier run that resume=false moved aside: not a seed of the run in its place
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
