"""Layer benchmark: forward+backward time and peak memory of each mixer at one shape, side by side.

Every case runs in a fresh process (a case that frees gigabytes would otherwise slow whichever case follows it),
in rounds that interleave the cases so machine noise hits every case alike: one untimed forward+backward, whose
peak memory is recorded (resident-set high-water mark above the resident set just before it: activations,
gradients and temporaries), then timed steps; the table gives medians.

    python -m benchmarks.layers                      # all cases, writes benchmarks/RESULTS.md and results.json
    python -m benchmarks.layers --only peer-128^2 ffw --rounds 2
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

from peerlab.mixers.ffw import FeedForward
from peerlab.mixers.moe import MoE
from peerlab.mixers.peer import PEER
from peerlab.mixers.pkm import PKM

HERE = Path(__file__).resolve().parent
D_MODEL, BATCH, SEQ = 256, 8, 128

CASES = {
    "ffw": lambda: FeedForward(D_MODEL, hidden_mult=4.0),
    **{f"peer-{n}^2": (lambda n=n: PEER(D_MODEL, n_experts=n * n, heads=8, k=16, d_key=128)) for n in (128, 256, 512, 1024)},
    **{f"peer-chunked-{n}^2": (lambda n=n: PEER(D_MODEL, n_experts=n * n, heads=8, k=16, d_key=128, impl="chunked")) for n in (128, 512)},
    **{f"pkm-{n}^2": (lambda n=n: PKM(D_MODEL, n_memories=n * n, heads=8, k=32, d_key=128)) for n in (128, 512)},
    **{f"moe-ec-E{e}": (lambda e=e: MoE(D_MODEL, n_experts=e, routing="expert_choice")) for e in (16, 128)},
    **{f"moe-tc1-E{e}": (lambda e=e: MoE(D_MODEL, n_experts=e, routing="token_choice", top_k=1)) for e in (16, 128)},
}


def step(layer: torch.nn.Module, x: torch.Tensor, probe: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    x.grad = None
    (layer(x) * probe).sum().backward()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, SEQ, D_MODEL, generator=g).requires_grad_()
    return x, torch.randn(BATCH, SEQ, D_MODEL, generator=g)


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
    """One case in this (fresh) process: peak memory of the first forward+backward above the resident set just
    before it, then the times of ``steps`` more steps."""
    torch.manual_seed(0)
    layer = CASES[name]().train()
    x, probe = inputs()
    reset_peak()
    base = _status_kib("VmRSS")
    step(layer, x, probe)
    peak_mib = max(0, _status_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(layer, x, probe)
        times.append(time.perf_counter() - t0)
    return {"peak_mib": peak_mib, "times": times}


def run_case(name: str, steps: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.layers", "--case", name, "--steps", str(steps)],
                          capture_output=True, text=True, check=True, cwd=HERE.parent)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one fresh process per case, interleaved")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process, after the first (untimed) one")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure_case(args.case, args.steps)))
        return
    names = args.only or list(CASES)
    print(f"{len(names)} cases x {args.rounds} rounds x {args.steps} timed steps (d_model={D_MODEL}, tokens={BATCH}x{SEQ})", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            result = run_case(n, args.steps)
            times[n] += result["times"]
            peaks[n].append(result["peak_mib"])
    rows = []
    for n in names:
        layer_cls = CASES[n]
        with torch.device("meta"):
            layer = layer_cls()
        rows.append({"case": n, "median_ms": 1e3 * statistics.median(times[n]), "min_ms": 1e3 * min(times[n]),
                     "peak_mib": statistics.median(peaks[n]), "params": sum(p.numel() for p in layer.parameters()),
                     "fwd_mflops_per_token": layer.flops_per_token() / 1e6})
        print(f"  {n:20s} {rows[-1]['median_ms']:8.1f} ms  {rows[-1]['peak_mib']:8.0f} MiB", flush=True)
    ffw = next((r for r in rows if r["case"] == "ffw"), None)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "d_model": D_MODEL, "tokens": BATCH * SEQ, "rounds": args.rounds, "steps": args.steps,
            "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "layers": rows}, indent=2))
    lines = [
        "# Layer benchmark",
        "",
        f"Forward+backward of one layer on {BATCH}x{SEQ} tokens, d_model={D_MODEL}, fp32, {meta['threads']} threads, "
        f"torch {meta['torch']}. Each case runs in its own fresh process ({args.rounds} rounds, cases interleaved): one "
        f"untimed step, then {args.steps} timed steps; the table gives the median over all timed steps. Peak memory: "
        "resident-set high-water mark of the first step above the resident set just before it (parameters and "
        "inputs already allocated). Made by `make bench` "
        f"(`python -m benchmarks.layers`) on {meta['date']}.",
        "",
        "PEER: h=8, k=16, d_key=128. PKM: h=8, k=32, d_key=128. MoE: experts of the dense FFW's width (1024), "
        "ec = expert choice (capacity factor 1), tc1 = token choice top-1.",
        "",
        "| layer | params | fwd MFLOP/token | fwd+bwd ms (median) | x ffw | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = f"{r['median_ms'] / ffw['median_ms']:.1f}" if ffw else "-"
        lines.append(f"| {r['case']} | {r['params'] / 1e6:.2f}M | {r['fwd_mflops_per_token']:.2f} | {r['median_ms']:.1f} | {rel} | {r['peak_mib']:.0f} |")
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
