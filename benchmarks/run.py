"""`make bench`: PEER, PKM, MoE and dense layers, PyPI PEER-pytorch and product-key-memory, and full training
steps, measured side by side (cases in ``benchmarks/cases.py``).

Every case runs in a fresh process (a case that frees gigabytes would otherwise slow whichever case follows it),
in rounds that interleave the cases so machine noise hits every case alike: one untimed step, whose peak memory is
recorded (resident-set high-water mark above the resident set just before it: activations, gradients, optimizer
state and temporaries), then timed steps; the tables give medians and check the targets of issue 7.

    python -m benchmarks.run                     # all cases: benchmarks/RESULTS.md and results.json (~10 min)
    python -m benchmarks.run --only ffw peer-chunked-128^2 --rounds 2 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.cases import (
    BATCH,
    CASES,
    D_KEY,
    D_MODEL,
    HEADS,
    LAYERS,
    LM,
    SEQ,
    STUDY_LAYERS,
    STUDY_MODELS,
    STUDY_STEPS,
    TRAIN_STEPS,
    K,
    build,
    tokens_per_step,
)

HERE = Path(__file__).resolve().parent


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure_case(name: str, steps: int) -> dict:
    """One case in this (fresh) process: peak memory of the first step above the resident set just before it,
    then the times of ``steps`` more steps."""
    torch.manual_seed(0)
    module, step = build(name)
    reset_peak()
    base = _status_kib("VmRSS")
    step()
    peak_mib = max(0, _status_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    flops = module.flops_per_token() if hasattr(module, "flops_per_token") else None
    return {"peak_mib": peak_mib, "times": times, "params": sum(p.numel() for p in module.parameters()),
            "fwd_mflops_per_token": None if flops is None else flops / 1e6}


def run_case(name: str, steps: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--case", name, "--steps", str(steps)],
                          capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio_check(rows: dict, label: str, num: str, den: str, limit: float, key: str, at_most: bool = True) -> str:
    if num not in rows or den not in rows:
        return f"| {label} | - | {'<=' if at_most else '>='} {limit} | not measured |"
    value = rows[num][key] / rows[den][key]
    met = value <= limit if at_most else value >= limit
    return f"| {label} | {value:.2f} | {'<=' if at_most else '>='} {limit} | {'met' if met else 'NOT met'} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=CASES, metavar="CASE", help=f"cases to run (default: all): {CASES}")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one fresh process per case, interleaved")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process, after the first (untimed) one")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        from peerlab.allocator import keep_freed_memory

        keep_freed_memory()  # as train.py does
        print(json.dumps(measure_case(args.case, args.steps)))
        return
    names = args.only or CASES
    print(f"{len(names)} cases x {args.rounds} rounds x {args.steps} timed steps", flush=True)
    results: dict[str, dict] = {n: {"times": [], "peaks": []} for n in names}
    for r in range(args.rounds):
        for i, n in enumerate(names, start=1):
            print(f"\r  round {r + 1}/{args.rounds}, case {i}/{len(names)}: {n:40s}", end="", flush=True)
            out = run_case(n, args.steps)
            if "error" in out:
                results[n]["error"] = out["error"]
                continue
            results[n]["times"] += out["times"]
            results[n]["peaks"].append(out["peak_mib"])
            results[n].update(params=out["params"], fwd_mflops_per_token=out["fwd_mflops_per_token"])
    print()
    rows = {}
    for n in names:
        res = results[n]
        if not res["times"]:
            print(f"  {n:34s} failed: {res.get('error')}")
            continue
        ms = 1e3 * statistics.median(res["times"])
        rows[n] = {"case": n, "median_ms": ms, "min_ms": 1e3 * min(res["times"]), "peak_mib": statistics.median(res["peaks"]),
                   "params": res["params"], "fwd_mflops_per_token": res["fwd_mflops_per_token"],
                   "tokens_per_s": tokens_per_step(n) / (ms / 1e3)}
        print(f"  {n:34s} {ms:9.1f} ms  {rows[n]['peak_mib']:8.0f} MiB", flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "d_model": D_MODEL, "tokens": BATCH * SEQ, "rounds": args.rounds, "steps": args.steps,
            "date": time.strftime("%Y-%m-%d"), "failed": {n: r["error"] for n, r in results.items() if "error" in r}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "cases": list(rows.values())}, indent=2))
    (args.out / "RESULTS.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out / 'RESULTS.md'}")


def markdown(rows: dict, meta: dict) -> str:
    ffw = rows.get("ffw")
    lines = [
        "# Benchmarks",
        "",
        f"{BATCH}x{SEQ} tokens, d_model={D_MODEL}, fp32, {meta['threads']} threads, torch {meta['torch']}. Each case runs "
        f"in its own fresh process ({meta['rounds']} rounds, cases interleaved): one untimed step, then {meta['steps']} "
        "timed steps; times are medians over all timed steps. Peak memory: resident-set high-water mark of the first "
        "step above the resident set just before it (parameters and inputs already allocated). Made by `make bench` "
        f"(`python -m benchmarks.run`) on {meta['date']}.",
        "",
        f"PEER: h={HEADS}, k={K}, d_key={D_KEY}, softmax routing; `chunked` has sparse (row-wise) expert-table "
        "gradients unless marked `dense-grads`; `torch` is the plain autograd path with dense gradients. "
        "PEER-pytorch 0.2.2 (PyPI) with `non_competing_scores=False` (the paper's routing), dim_key 64 per half. "
        "PKM: h=8, k=32, d_key=128; product-key-memory (PyPI) with the same sizes. MoE: experts of the dense FFW's "
        "width (1024), ec = expert choice (capacity factor 1), tc1 = token choice top-1.",
        "",
        "## Layers: forward + backward",
        "",
        "| layer | params | fwd MFLOP/token | fwd+bwd ms (median) | x ffw | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted(set(rows) & set(LAYERS), key=list(LAYERS).index):
        r = rows[n]
        flops = "-" if r["fwd_mflops_per_token"] is None else f"{r['fwd_mflops_per_token']:.2f}"
        rel = f"{r['median_ms'] / ffw['median_ms']:.1f}" if ffw else "-"
        lines.append(f"| {n} | {r['params'] / 1e6:.2f}M | {flops} | {r['median_ms']:.1f} | {rel} | {r['peak_mib']:.0f} |")
    lines += ["", f"## Training steps: LM with d_model={LM.d_model}, {LM.n_layer} blocks, vocab {LM.vocab_size}; "
              "forward, backward, clipping and LazyAdamW", "",
              "| model | params | step ms (median) | tokens/s | peak MiB |", "|---|---|---|---|---|"]
    for n in sorted(set(rows) & set(TRAIN_STEPS), key=list(TRAIN_STEPS).index):
        r = rows[n]
        lines.append(f"| {n} | {r['params'] / 1e6:.2f}M | {r['median_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} |")
    lines += ["", "## Targets (issue 7)", "", "| target | measured | limit | |", "|---|---|---|---|",
              ratio_check(rows, "PEER time / PEER-pytorch, N=128^2", "peer-chunked-128^2", "PEER-pytorch-128^2", 0.25, "median_ms"),
              ratio_check(rows, "PEER time / PEER-pytorch, N=512^2", "peer-chunked-512^2", "PEER-pytorch-512^2", 0.25, "median_ms"),
              ratio_check(rows, "PEER peak memory / PEER-pytorch, N=128^2", "peer-chunked-128^2", "PEER-pytorch-128^2", 0.5, "peak_mib"),
              ratio_check(rows, "PEER peak memory / PEER-pytorch, N=512^2", "peer-chunked-512^2", "PEER-pytorch-512^2", 0.5, "peak_mib"),
              ratio_check(rows, "training step N=1024^2 / N=128^2", "step-peer-1024^2", "step-peer-128^2", 1.5, "median_ms"),
              ratio_check(rows, "tokens/s PEER 128^2 model / dense backbone", "step-peer-128^2", "step-dense", 0.8,
                          "tokens_per_s", at_most=False),
              ratio_check(rows, "tokens/s PEER 1024^2 model / dense backbone", "step-peer-1024^2", "step-dense", 0.8,
                          "tokens_per_s", at_most=False)]
    lines += ["", "## The matched study's models (issue 12): vocab 512, 16 x 128 tokens, one thread, full optimizer steps",
              "", "| model | layer | params | step ms (median) | tokens/s | x dense tokens/s |", "|---|---|---|---|---|---|"]
    for n in sorted(set(rows) & set(STUDY_STEPS), key=list(STUDY_STEPS).index):
        r, (m, layer) = rows[n], STUDY_STEPS[n]
        dense = rows.get(f"study-{m}-ffw")
        rel = f"{r['tokens_per_s'] / dense['tokens_per_s']:.2f}" if dense else "-"
        lines.append(f"| {m} | {layer} | {r['params'] / 1e6:.2f}M | {r['median_ms']:.1f} | {r['tokens_per_s']:.0f} | {rel} |")
    lines += ["", "## Targets (issues 12 and 19)", "", "| target | measured | limit | |", "|---|---|---|---|"]
    lines += [ratio_check(rows, f"tokens/s {m} {layer} / dense", f"study-{m}-{layer}", f"study-{m}-ffw", 0.8, "tokens_per_s",
                          at_most=False) for m in STUDY_MODELS for layer in STUDY_LAYERS if layer != "ffw"]
    if meta["failed"]:
        lines += ["", "Failed cases: " + "; ".join(f"{k}: {v}" for k, v in meta["failed"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
