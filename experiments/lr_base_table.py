"""Table for issue 19 step 1a: base lr x0.5 / x1 / x2 per layer at 8e12, s3; x1 from the committed study table."""
import json
import re
import statistics as st
from pathlib import Path

root = Path("runs/sweeps/lr_base_matched")
base = {}  # x1: the study's own s3/8e12 seeds (experiments/results/isoflop_cpu_matched/runs.md)
for line in Path("experiments/results/isoflop_cpu_matched/runs.md").read_text().splitlines():
    m = re.match(r"\| 8e12 \| (\w+) \| 0.114M \| (\d) \| [^|]+\| [^|]+\| [^|]+\| [^|]+\| ([\d.]+) \|", line)
    if m:
        base.setdefault(m[1], []).append(float(m[3]))
runs = {}
for p in root.glob("*/results.json"):
    r = json.loads(p.read_text())
    if r.get("status") == "completed":
        runs.setdefault((r["config"]["layer"]["name"], r["config"]["optim"]["lr"]), []).append(r["final_val_loss"])
def fmt(v):
    if not v:
        return "not run yet", None, None
    m = st.mean(v); s = st.stdev(v) if len(v) > 1 else None
    return f"{m:.4f}" + (f" ± {s:.4f}" if s is not None else "") + f" ({len(v)})", m, s
lines = ["| layer | lr 1e-3 (x0.5) | lr 2e-3 (x1, the study's) | lr 4e-3 (x2) | best | best - x1, in sd of the difference |",
         "|---|---|---|---|---|---|"]
for layer in ("ffw", "moe_matched", "pkm_matched", "peer_matched"):
    cells = {lr: fmt(runs.get((layer, lr), [])) for lr in (1e-3, 4e-3)}
    x1 = fmt(base.get(layer, []))
    options = [(x1[1], "2e-3", x1[2], base.get(layer, []))] + [(cells[lr][1], f"{lr:g}", cells[lr][2], runs.get((layer, lr), [])) for lr in (1e-3, 4e-3)]
    complete = [o for o in options if o[0] is not None and len(o[3]) == 3]
    best = min(complete, key=lambda o: o[0]) if len(complete) == 3 else None
    if best is None:
        verdict = "-"
        bname = "incomplete"
    else:
        bname = best[1]
        if best[1] == "2e-3":
            verdict = "x1 is best"
        else:
            d = best[0] - x1[1]
            sd = (best[2] ** 2 / 3 + x1[2] ** 2 / 3) ** 0.5
            verdict = f"{d:+.4f} ({d / sd:+.1f} sd)"
    lines.append(f"| {layer} | {cells[1e-3][0]} | {x1[0]} | {cells[4e-3][0]} | {bname} | {verdict} |")
out = "\n".join(lines) + "\n"
Path("experiments/results/lr_base_matched/table.md").write_text(
    "Final validation loss (nats), mean ± seed sd (seeds), at 8e12 FLOPs on s3 (the 8e12 optimum of every layer).\n"
    "Made by `python experiments/lr_base_table.py` (then the run list) from runs/sweeps/lr_base_matched and the study's runs.md.\n\n" + out)
print(out)
