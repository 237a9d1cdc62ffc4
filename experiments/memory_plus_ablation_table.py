"""Memory+'s three differences from PKM, one at a time (issue 19; ``memory_plus_ablation.yaml``): final validation
loss at 8e12 FLOPs on s3, lr 2e-3, 3 seeds per step, each step against the one before it in seed sd of the
difference of means. The two ends are the matched study's own seeds: PKM from the committed
``isoflop_cpu_matched/runs.md`` (its run folders are not kept), Memory+ from ``runs/sweeps/isoflop_cpu_matched``.

    python experiments/memory_plus_ablation_table.py
writes experiments/results/memory_plus_ablation/table.md.
"""

from __future__ import annotations

from pathlib import Path

from lr_tables import RESULTS, at_study_point, completed, in_sd, study_seeds, summary

ABLATION, STUDY = Path("runs/sweeps/memory_plus_ablation"), Path("runs/sweeps/isoflop_cpu_matched")
STEPS = ("PKM (query BatchNorm, d_key 24)", "+ qk-norm instead of BatchNorm", "+ half the d_key (12)",
         "+ the SiLU gate = Memory+")


def step_of(config: dict) -> int | None:
    layer = config["layer"]
    if not at_study_point(config):
        return None
    if layer["name"] == "memory_plus":
        return 3
    if layer["name"] == "pkm_matched" and layer.get("qk_norm") and layer["query_norm"] == "none":
        return 2 if layer["d_key"] == 12 else 1 if layer["d_key"] is None else None
    return None


def main() -> None:
    losses: dict[int, list[float]] = {0: study_seeds()["pkm_matched"]}
    usage: dict[int, list[float]] = {}
    for root in (ABLATION, STUDY):
        for r in completed(root) if root.is_dir() else []:
            step = step_of(r["config"])
            if step is not None:
                losses.setdefault(step, []).append(r["final_val_loss"])
                if "val/expert_usage" in r.get("usage", {}):
                    usage.setdefault(step, []).append(r["usage"]["val/expert_usage"])
    lines = ["| step | final val loss | - the step before | memory usage (val) |", "|---|---|---|---|"]
    for step, name in enumerate(STEPS):
        values = losses.get(step, [])
        before = losses.get(step - 1, [])
        delta = in_sd(values, before) if step and values and before else ""
        use = f"{100 * sum(usage[step]) / len(usage[step]):.1f}%" if step in usage else "-"
        lines.append(f"| {name} | {summary(values)[2]} | {delta} | {use} |")
    text = ("Memory+ against PKM, one difference at a time: final validation loss (nats), mean ± seed sd (seeds), at "
            "8e12 FLOPs on s3, lr 2e-3; each variant trains for its own steps at the same FLOPs. Usage: the share of "
            "memory slots retrieved on the validation set, mean over seeds. Made by `python "
            "experiments/memory_plus_ablation_table.py`.\n\n" + "\n".join(lines) + "\n")
    out = RESULTS / "memory_plus_ablation"
    out.mkdir(exist_ok=True)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
