"""Tables for issue 19 step 1: learning-rate sensitivity at the 8e12 optimum (s3), 3 seeds per setting.

- ``lr_base_matched/table.md``: each layer's final validation loss at every base lr run; the study's own x1 seeds
  (lr 2e-3) come from the committed ``isoflop_cpu_matched/runs.md``, since their run folders are not kept; the
  successors' (``moe_fine``, ``memory_plus``, ``peer_linear``, ``peer_matched_wide``) from their run folders, and a
  successor is listed once it has an lr point of its own.
- ``lr_groups_matched/table.md``: each sparse layer's own groups (PEER's expert tables, PKM's values, the product
  keys; Memory+'s values) at multiples of their lr, at the layer's best base lr, against that base point.

Each best setting is compared with the layer's reference in seed sd of the difference of means (sqrt(s1^2/n1 +
s2^2/n2)); "> 2 sd" marks the settings that issue 19 reruns the 8e12 row with.
    python experiments/lr_tables.py
"""

from __future__ import annotations

import json
import re
import statistics as st
from pathlib import Path

RESULTS = Path("experiments/results")
LAYERS = ("ffw", "moe_matched", "pkm_matched", "peer_matched")
SUCCESSORS = ("moe_fine", "memory_plus", "peer_linear", "peer_matched_wide")
STUDY_LR = 2e-3


def study_seeds() -> dict[str, list[float]]:
    """The s3 / 8e12 final losses per layer at the study's lr: the four layers' from the matched study's committed
    runs.md, the successors' from their run folders in the study's sweep folder."""
    seeds: dict[str, list[float]] = {}
    for line in (RESULTS / "isoflop_cpu_matched" / "runs.md").read_text().splitlines():
        m = re.match(r"\| 8e12 \| (\w+) \| 0.114M \| (\d) \| [^|]+\| [^|]+\| [^|]+\| [^|]+\| ([\d.]+) \|", line)
        if m:
            seeds.setdefault(m[1], []).append(float(m[3]))
    study = Path("runs/sweeps/isoflop_cpu_matched")
    for r in completed(study) if study.is_dir() else []:
        if r["config"]["layer"]["name"] in SUCCESSORS and at_study_point(r["config"]):
            seeds.setdefault(r["config"]["layer"]["name"], []).append(r["final_val_loss"])
    return seeds


def at_study_point(config: dict) -> bool:
    """A run at the study's 8e12 / s3 point and lr."""
    return config["budget"] == 8e12 and config["model"]["name"] == "s3" and config["optim"]["lr"] == STUDY_LR


def completed(root: Path) -> list[dict]:
    out = []
    for p in sorted(root.glob("*/results.json")):
        r = json.loads(p.read_text())
        if r.get("status") == "completed":
            out.append(r)
    return out


def summary(values: list[float]) -> tuple[float | None, float | None, str]:
    if not values:
        return None, None, "-"
    mean = st.mean(values)
    sd = st.stdev(values) if len(values) > 1 else None
    return mean, sd, f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "") + f" ({len(values)})"


def in_sd(a: list[float], b: list[float]) -> str:
    """``mean(a) - mean(b)`` and that difference in sd of the difference."""
    d = st.mean(a) - st.mean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{d:+.4f}"
    sd = (st.variance(a) / len(a) + st.variance(b) / len(b)) ** 0.5
    return f"{d:+.4f} ({d / sd:+.1f} sd)"


def run_rows(runs: list[dict], extra: list[str]) -> list[str]:
    head = ["layer", "lr", *extra, "seed", "final val loss", "steps", "wall s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=lambda r: (r["config"]["layer"]["name"], r["config"]["optim"]["lr"],
                                         *[str(group_lr(r, g)) for g in extra], r["config"]["seed"])):
        cells = [r["config"]["layer"]["name"], f"{r['config']['optim']['lr']:g}",
                 *[str(group_lr(r, g)) for g in extra], str(r["config"]["seed"]), f"{r['final_val_loss']:.4f}",
                 str(r["steps"]), f"{r['wall_time_s']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def group_lr(r: dict, group: str):
    return (r["config"]["optim"].get("groups", {}).get(group) or {}).get("lr", "-")


def base_points() -> dict[tuple[str, float], list[float]]:
    """Final losses per (layer, base lr): lr_base_matched's runs and the study's own x1 seeds."""
    by: dict[tuple[str, float], list[float]] = {}
    for r in completed(Path("runs/sweeps/lr_base_matched")):
        by.setdefault((r["config"]["layer"]["name"], r["config"]["optim"]["lr"]), []).append(r["final_val_loss"])
    for layer, values in study_seeds().items():
        by[(layer, STUDY_LR)] = values
    return by


def base_table() -> tuple[str, dict[str, float]]:
    """The base-lr table, and each layer's best base lr among settings with 3 seeds."""
    runs = completed(Path("runs/sweeps/lr_base_matched"))
    by = base_points()
    lrs = sorted({lr for _, lr in by})
    head = ["layer", *[f"lr {lr:g} (x{lr / STUDY_LR:g})" for lr in lrs], "best", "best - x1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best_lr = {}
    for layer in (*LAYERS, *SUCCESSORS):
        if not any(lr != STUDY_LR for name, lr in by if name == layer):
            continue  # a successor with no lr point of its own yet
        cells = [summary(by.get((layer, lr), []))[2] for lr in lrs]
        full = [(st.mean(by[(layer, lr)]), lr) for lr in lrs if len(by.get((layer, lr), [])) >= 3]
        best = min(full)[1] if full else None
        best_lr[layer] = best
        edge = best in (min(lr for _, lr in full), max(lr for _, lr in full)) if full else False
        verdict = "-" if best is None else ("x1 is best" if best == STUDY_LR else in_sd(by[(layer, best)], by[(layer, STUDY_LR)]))
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {best:g}{' (edge of the grid)' if edge else ''} | {verdict} |")
    text = ("Final validation loss (nats), mean ± seed sd (seeds), at 8e12 FLOPs on s3 (the 8e12 optimum of every "
            "layer); x1 is the study's lr, its seeds from the study's runs.md (the successors': runs/sweeps/"
            "isoflop_cpu_matched). best - x1: difference of means, in sd "
            "of the difference. Made by `python experiments/lr_tables.py` from runs/sweeps/lr_base_matched.\n\n"
            + "\n".join(lines) + "\n\nEvery run of this sweep:\n\n" + "\n".join(run_rows(runs, [])) + "\n")
    return text, best_lr


GROUPS = {"peer_matched": ("peer_experts", "product_keys"), "pkm_matched": ("pkm_values", "product_keys"),
          "memory_plus": ("pkm_values",)}


def group_runs() -> list[dict]:
    root = Path("runs/sweeps/lr_groups_matched")
    return completed(root) if root.is_dir() else []


def group_points(runs: list[dict]) -> dict[tuple[str, float, str, float], list[float]]:
    """Final losses per (layer, base lr, group, group lr) for the groups set away from their default."""
    settings: dict[tuple, list[float]] = {}
    for r in runs:
        layer, lr = r["config"]["layer"]["name"], r["config"]["optim"]["lr"]
        for group in GROUPS.get(layer, ()):
            glr = group_lr(r, group)
            default = 1e-3 if group == "pkm_values" else "-"
            if glr not in ("-", default):
                settings.setdefault((layer, lr, group, glr), []).append(r["final_val_loss"])
    return settings


def groups_table() -> str | None:
    runs = group_runs()
    if not runs:
        return None
    base = base_points()
    lines = ["| layer | base lr | group | group lr | final val loss | - the base point (group at its default) |",
             "|---|---|---|---|---|---|"]
    for (layer, lr, group, glr), values in sorted(group_points(runs).items()):
        ref = base.get((layer, lr), [])
        lines.append(f"| {layer} | {lr:g} | {group} | {glr:g} | {summary(values)[2]} | {in_sd(values, ref) if ref else '-'} |")
    extra = sorted({g for gs in GROUPS.values() for g in gs})
    return ("Final validation loss (nats), mean ± seed sd (seeds), at 8e12 FLOPs on s3: one group's lr changed, every "
            "other setting at the layer's base point (runs/sweeps/lr_base_matched, same base lr). Made by `python "
            "experiments/lr_tables.py` from runs/sweeps/lr_groups_matched.\n\n" + "\n".join(lines)
            + "\n\nEvery run of this sweep:\n\n" + "\n".join(run_rows(runs, extra)) + "\n")


def best_table() -> str:
    """Every layer at its best setting by mean among those with 3 seeds (base lr, or base lr plus one group's
    lr), at the same point (8e12, s3), against dense and PEER."""
    best: dict[str, tuple[float, str, list[float]]] = {}
    candidates = [(layer, f"lr {lr:g}", v) for (layer, lr), v in base_points().items()]
    candidates += [(layer, f"lr {lr:g}, {group} {glr:g}", v) for (layer, lr, group, glr), v in group_points(group_runs()).items()]
    for layer, label, values in candidates:
        if len(values) >= 3 and (layer not in best or st.mean(values) < best[layer][0]):
            best[layer] = (st.mean(values), label, values)
    tried = {layer: sum(len(v) >= 3 for name, _, v in candidates if name == layer) for layer in best}
    lines = ["| layer | best setting (of the settings tried) | final val loss | - ffw | - peer_matched |",
             "|---|---|---|---|---|"]
    for layer, (_, label, values) in sorted(best.items(), key=lambda kv: kv[1][0]):
        vs = [in_sd(values, best[ref][2]) if ref in best and ref != layer else "" for ref in ("ffw", "peer_matched")]
        lines.append(f"| {layer} | {label} ({tried[layer]}) | {summary(values)[2]} | {vs[0]} | {vs[1]} |")
    return ("Every layer at its best learning-rate setting, at 8e12 FLOPs on s3 (every layer's 8e12 optimum at the "
            "study's lr lies within a factor 1.5 of s3's size): final validation loss, mean ± seed sd (seeds), "
            "ordered best first. The best is the lowest mean among the settings with 3 seeds, which favours the layers "
            "with more settings tried (in brackets): a few hundredths of a nat at these seed spreads. - ffw, - "
            "peer_matched: difference of means, in sd of the difference. Made by `python experiments/lr_tables.py`.\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    text, best = base_table()
    (RESULTS / "lr_base_matched" / "table.md").write_text(text)
    print(text.split("\n\nEvery run")[0], "\nbest base lr:", best)
    groups = groups_table()
    if groups:
        (RESULTS / "lr_groups_matched").mkdir(exist_ok=True)
        (RESULTS / "lr_groups_matched" / "table.md").write_text(groups)
        print(groups.split("\n\nEvery run")[0])
    (RESULTS / "lr_tuned_s3").mkdir(exist_ok=True)
    (RESULTS / "lr_tuned_s3" / "table.md").write_text(best := best_table())
    print(best)


if __name__ == "__main__":
    main()
