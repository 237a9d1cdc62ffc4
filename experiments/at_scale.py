"""The planner against torch's own memory tracker at the paper's scale: every point of the isoFLOP grid, on GPUs of
40 and of 80 GB.

    python experiments/at_scale.py                # both card sizes, resuming from at_scale_<card>.json; ~25 min
    python experiments/at_scale.py --card 40      # one card size only (run the two on two cores)
    python experiments/at_scale.py --table        # the planner beside what is measured -> at_scale.md

Each point is composed exactly as ``train.py -m -cd experiments -cn isoflop_paper`` composes it, with the
micro-batch ``data.batch_size=auto`` takes on that card. Its training step runs for real on fake tensors over a
fake group of 8 ranks (:mod:`peerlab.parallel.fake_step`), measured by torch's ``FSDPMemTracker``; the planner's
peak for CUDA (``python -m peerlab.plan``) stands beside it. Memory does not depend on the budget, so the grid's
first budget stands for both. On 40 GB, PKM and PEER also run with their tables gathered by FSDP
(``trainer.memory_parallel=1``, at 4 x 4, the micro-batch of d24's split tables; PEER through
``layer.impl=chunked``, since its Triton kernels cannot run on fake tensors). Results: ``experiments/results/memory/at_scale_<card>.json`` and ``at_scale.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory"
GRID = "isoflop_paper"
CARDS = (40, 80)  # GiB
WORLD = 8
TOLERANCE = 0.10  # the bar: the planner within 10% of the tracker
GIB = 2**30


def points(card: int) -> list[tuple[str, list[str]]]:
    """(key, overrides) of every distinct point of the grid (one budget), then the gathered-table variants (40 GB)."""
    from peerlab.sweeps.expand import grid

    out, seen = [], set()
    for overrides in grid(HERE, GRID, []):
        plain = [o for o in overrides if not o.startswith("budget=")]
        if tuple(plain) in seen:
            continue
        seen.add(tuple(plain))
        out.append((" ".join(plain), overrides))
    if card == 40:
        for key, overrides in list(out):
            layer = dict(o.split("=", 1) for o in overrides)["layer"]
            if layer in ("pkm", "peer"):
                # at the micro-batch the split tables take, so that the two compare
                extra = ["trainer.memory_parallel=1", "data.batch_size=4", "trainer.accumulate_grad_batches=4",
                         "data.sequences_per_step=null"] + (["layer.impl=chunked"] if layer == "peer" else [])
                out.append((f"{key} {' '.join(extra)}", [*overrides, *extra]))
    return out


def composed(card: int, overrides: list[str]):
    """The point's config with its micro-batch settled for ``card`` GiB, as a run on that card settles it."""
    from peerlab.parallel import micro_batch
    from peerlab.parallel.plan import HEADROOM
    from peerlab.sweeps.expand import compose_point

    return micro_batch.settle(compose_point(HERE, GRID, overrides), WORLD, "cuda", HEADROOM * card * GIB)


def measure(card: int, overrides: list[str]) -> dict:
    """The tracker's peak of the point's step (slow: the step runs)."""
    from peerlab.parallel.fake_step import tracked_step
    from peerlab.parallel.plan import _meta_model, execution, vocab_size

    cfg = composed(card, overrides)
    model = _meta_model(cfg)
    m = execution(cfg, "cuda", WORLD, model).memory_parallel
    step = tracked_step(cfg, WORLD, vocab_size(cfg), m)
    return {"card_gb": card, "overrides": overrides, "micro_batch": int(cfg.data.batch_size),
            "accumulate": int(cfg.trainer.accumulate_grad_batches), "memory_parallel": m,
            "tracker_gib": step.peak / GIB, "tracker": {k: v / GIB for k, v in step.grouped().items()},
            "seconds": round(step.seconds, 1)}


def with_plan(row: dict) -> dict:
    """``row`` with the planner's figures as the planner gives them now (fast: nothing runs)."""
    from peerlab.parallel.plan import plan_point
    from peerlab.sweeps.expand import compose_point

    plan = plan_point(compose_point(HERE, GRID, row["overrides"]), row["overrides"], row["card_gb"], device="cuda")
    if (plan["micro_batch"], plan["memory_parallel"]) != (row["micro_batch"], row["memory_parallel"]):
        raise SystemExit(f"{' '.join(row['overrides'])} on {row['card_gb']} GB: the planner now chooses micro-batch "
                         f"{plan['micro_batch']}, M {plan['memory_parallel']}, not what was measured; measure again")
    return {**row, "precision": plan["precision"], "plan_gib": plan["estimate_gb"], "plan_phase": plan["phase"],
            "overhead_gib": plan["overhead_gb"],
            "plan": {"model states": plan["states_gb"], "activations at the end of forward": plan["activations_gb"],
                     "transients at the peak": plan["transients_gb"]}}


def diff(row: dict) -> float:
    return row["plan_gib"] / row["tracker_gib"] - 1


def table(rows: list[dict]) -> str:
    lines = [
        "# The planner against torch's memory tracker at full scale",
        "",
        "Made by `python experiments/at_scale.py` (experiments/at_scale.py says how): each point's real training step",
        "(peerlab's model, FSDP2 units, split tables, LazyAdamW, micro-batches with accumulation, forward, backward and",
        "optimizer step) on fake tensors over a fake group of 8 ranks, under torch's `FSDPMemTracker`, beside",
        "`python -m peerlab.plan`'s peak for CUDA. bf16-mixed: blocks gathered in bf16 by FSDP, matmuls under the",
        "CPU's bf16 autocast (CUDA's is off without CUDA), AdamW's fused kernel. GiB per GPU. Memory does not depend",
        "on the budget: one row stands for both budgets of a point. The micro-batch is the one `data.batch_size=auto`",
        "takes on the card. Not in either column: the CUDA context and NCCL's buffers (the planner adds them to its fit",
        "test: last column, `peerlab.parallel.cuda_overhead`), the allocator's fragmentation.",
        "",
        "| card | point | tables | micro-batch x accumulation | tracker | planner | planner - tracker | "
        "planner's peak at | tracker: params / grads / AdamW / activations / bw temporaries / FSDP buffers | "
        "+ CUDA, NCCL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["tracker"]
        cats = " / ".join(f"{t[k]:.2f}" for k in ("parameters", "gradients", "optimizer", "activations",
                                                   "backward temporaries", "FSDP buffers"))
        point = " ".join(o for o in r["overrides"] if o.startswith(("model=", "layer=")))
        layer = point.split("layer=")[1]
        tables = ("-" if layer in ("ffw", "moe") else
                  f"split over {r['memory_parallel']}" if r["memory_parallel"] > 1 else
                  "gathered (FSDP)" + (", chunked" if "layer.impl=chunked" in r["overrides"] else ""))
        lines.append(f"| {r['card_gb']} GB | {point} | {tables} | {r['micro_batch']} x "
                     f"{r['accumulate']} | {r['tracker_gib']:.2f} | {r['plan_gib']:.2f} | {diff(r):+.1%} | "
                     f"{r['plan_phase']} | {cats} | {r['overhead_gib']:.2f} |")
    worst = max(rows, key=lambda r: abs(diff(r)))
    lines += ["", f"{len(rows)} points; the largest difference {diff(worst):+.1%} "
              f"({' '.join(worst['overrides'])}, {worst['card_gb']} GB); every point within {TOLERANCE:.0%}: "
              f"{all(abs(diff(r)) <= TOLERANCE for r in rows)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=int, choices=CARDS, action="append", help="GiB per GPU (default: both)")
    parser.add_argument("--table", action="store_true", help="only rewrite the markdown from the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        from tqdm import tqdm

        for card in args.card or CARDS:
            path = args.out / f"at_scale_{card}gb.json"
            done = json.loads(path.read_text()) if path.exists() else {}
            todo = [(k, o) for k, o in points(card) if k not in done]
            for key, overrides in tqdm(todo, desc=f"{card} GB", file=sys.stderr):
                done[key] = measure(card, overrides)
                path.write_text(json.dumps(done, indent=1) + "\n")  # a point at a time: an interrupted run resumes
        if args.card:  # another card size may be measuring beside this one: --table joins them afterwards
            return 0
    rows = []
    for card in CARDS:
        path = args.out / f"at_scale_{card}gb.json"
        if path.exists():
            done = {k: with_plan(r) for k, r in json.loads(path.read_text()).items() if k in dict(points(card))}
            path.write_text(json.dumps(done, indent=1) + "\n")
            rows += list(done.values())
    (args.out / "at_scale.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
